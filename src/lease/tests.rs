use super::*;

fn lease(holder: Option<&str>, renewed_ms_ago: i64, duration_s: i32, now: Timestamp) -> Lease {
    // The holder's renewTime, on the holder's clock: it plays no part in expiry.
    let renewed = Timestamp::from_millisecond(now.as_millisecond() - renewed_ms_ago).unwrap();
    Lease {
        metadata: ObjectMeta::default(),
        spec: Some(LeaseSpec {
            holder_identity: holder.map(str::to_owned),
            lease_duration_seconds: Some(duration_s),
            renew_time: Some(MicroTime(renewed)),
            ..LeaseSpec::default()
        }),
    }
}

#[test]
fn a_lease_is_free_when_unheld_ours_or_unchanged_for_its_duration_as_watched() {
    let now = Timestamp::now();
    let default = Duration::from_secs(15);
    let secs = Duration::from_secs;
    let cases = [
        ("nobody holds it", lease(None, 0, 15, now), secs(0), true),
        ("empty holder", lease(Some(""), 0, 15, now), secs(0), true),
        (
            "ours from an earlier run",
            lease(Some("me"), 0, 15, now),
            secs(0),
            true,
        ),
        (
            "another's, unchanged for 14 s here",
            lease(Some("other"), 0, 15, now),
            secs(14),
            false,
        ),
        (
            "another's, unchanged for 16 s here",
            lease(Some("other"), 0, 15, now),
            secs(16),
            true,
        ),
        (
            "another's whose clock is a minute behind, just renewed",
            lease(Some("other"), 60_000, 15, now),
            secs(0),
            false,
        ),
        (
            "another's whose clock is a minute ahead, silent for 16 s",
            lease(Some("other"), -60_000, 15, now),
            secs(16),
            true,
        ),
        (
            "another's, no spec",
            Lease {
                metadata: ObjectMeta::default(),
                spec: None,
            },
            secs(0),
            true,
        ),
    ];
    for (name, lease, unchanged_for, free) in cases {
        assert_eq!(
            is_free(&lease, "me", unchanged_for, default),
            free,
            "case: {name}"
        );
    }
}

#[test]
fn durations_round_up_to_whole_seconds() {
    assert_eq!(duration_seconds(Duration::from_millis(1500)), 2);
    assert_eq!(duration_seconds(Duration::from_secs(15)), 15);
    assert_eq!(duration_seconds(Duration::ZERO), 1);
}

#[test]
fn jitter_stays_within_half_and_one_and_a_half() {
    for _ in 0..100 {
        let pause = jittered(Duration::from_millis(200));
        assert!(pause >= Duration::from_millis(100) && pause < Duration::from_millis(300));
    }
}
