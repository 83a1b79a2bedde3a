use super::*;

#[test]
fn extents_are_clipped_to_request_and_width() {
    let mut e = vec![Extent {
        length: 1 << 40,
        flags: 3,
    }];
    clip_extents(&mut e, 1 << 20, ReplyMode::Structured, 10);
    assert_eq!(
        e,
        vec![Extent {
            length: 1 << 20,
            flags: 3
        }]
    );

    let mut e = vec![
        Extent { length: 100, flags: 0 },
        Extent { length: 100, flags: 3 },
        Extent { length: 100, flags: 0 },
    ];
    clip_extents(&mut e, 150, ReplyMode::Extended, 10);
    assert_eq!(
        e,
        vec![Extent { length: 100, flags: 0 }, Extent { length: 50, flags: 3 }]
    );

    let mut e = vec![Extent { length: 100, flags: 0 }, Extent { length: 100, flags: 3 }];
    clip_extents(&mut e, 1000, ReplyMode::Extended, 1);
    assert_eq!(e.len(), 1);
}
