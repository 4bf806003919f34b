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
FROM gcr.io/distroless/static-debian12:nonroot

COPY --chmod=0555 target/image/spot-guard /usr/local/bin/spot-guard

USER 65532:65532
ENTRYPOINT ["/usr/local/bin/spot-guard"]
