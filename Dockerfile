# spot-guard image: one static (musl) binary on distroless/static, non-root.
#
# The binary is built outside Docker by scripts/build-static.sh (run for real on the
# project's machines, which have no Docker engine), so the image build only copies a file:
#
#   bash scripts/build-static.sh      # writes target/image/spot-guard (stripped)
#   docker build -t spot-guard:0.1.0 .
#
# distroless/static carries CA certificates (/etc/ssl/certs/ca-certificates.crt, for
# the AWS API over rustls), tzdata and a "nonroot" user (65532), and no shell.
#
# Pinned by digest (the tag says what it is, the digest which one): a rebuild gets the same
# base until a reviewed commit changes it. To update, where gcr.io is reachable:
#   docker buildx imagetools inspect gcr.io/distroless/static-debian12:nonroot
#   (or: crane digest gcr.io/distroless/static-debian12:nonroot)
# and replace the sha256 below. scripts/supply-chain.sh fails on any FROM without one.
FROM gcr.io/distroless/static-debian12:nonroot@sha256:d093aa3e30dbadd3efe1310db061a14da60299baff8450a17fe0ccc514a16639

COPY --chmod=0555 target/image/spot-guard /usr/local/bin/spot-guard

USER 65532:65532
ENTRYPOINT ["/usr/local/bin/spot-guard"]
