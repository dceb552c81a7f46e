//! Property tests of the codec: every message round-trips (header versions 1 and 2, any split of
//! the byte stream), and no input — random bytes, or a valid message with bytes changed — makes
//! the decoder panic.

use proptest::prelude::*;
use telecho_igtl::{
    Content, Coordinate, Decoder, Endian, Image, Message, PointElement, Request, RequestKind,
    ScalarType, Status, Timestamp, TransformData,
};

fn ascii(max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(0x20u8..0x7f, 0..=max).prop_map(|v| String::from_utf8(v).unwrap())
}

fn utf8(max_bytes: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![Just('a'), Just('é'), Just('→'), Just('Z')],
        0..=max_bytes / 3,
    )
    .prop_map(|v| v.into_iter().collect::<String>())
}

fn finite() -> impl Strategy<Value = f32> {
    prop_oneof![
        -1.0e6f32..1.0e6,
        Just(0.0f32),
        Just(-0.0f32),
        Just(f32::MIN_POSITIVE)
    ]
}

fn scalar() -> impl Strategy<Value = ScalarType> {
    prop_oneof![
        Just(ScalarType::Int8),
        Just(ScalarType::Uint8),
        Just(ScalarType::Int16),
        Just(ScalarType::Uint16),
        Just(ScalarType::Int32),
        Just(ScalarType::Uint32),
        Just(ScalarType::Float32),
        Just(ScalarType::Float64),
    ]
}

fn image() -> impl Strategy<Value = Image> {
    (
        1u8..4,
        scalar(),
        any::<bool>(),
        any::<bool>(),
        [1u16..6, 1u16..6, 1u16..4],
        [
            [finite(), finite(), finite()],
            [finite(), finite(), finite()],
            [finite(), finite(), finite()],
        ],
        [finite(), finite(), finite()],
    )
        .prop_flat_map(|(components, scalar_type, big, ras, size, axes, center)| {
            let n = size.iter().map(|&s| usize::from(s)).product::<usize>()
                * usize::from(components)
                * scalar_type.size();
            proptest::collection::vec(any::<u8>(), n).prop_map(move |data| Image {
                components,
                scalar_type,
                endian: if big { Endian::Big } else { Endian::Little },
                coordinate: if ras {
                    Coordinate::Ras
                } else {
                    Coordinate::Lps
                },
                size,
                axes,
                center,
                subvolume_offset: [0; 3],
                subvolume_size: size,
                data,
            })
        })
}

fn point() -> impl Strategy<Value = PointElement> {
    (
        utf8(64),
        ascii(32),
        any::<[u8; 4]>(),
        [finite(), finite(), finite()],
        finite(),
        ascii(20),
    )
        .prop_map(
            |(name, group, rgba, position, diameter, owner)| PointElement {
                name,
                group,
                rgba,
                position,
                diameter,
                owner,
            },
        )
}

fn request() -> impl Strategy<Value = Request> {
    (
        prop_oneof![
            Just(RequestKind::Get),
            Just(RequestKind::Start),
            Just(RequestKind::Stop),
            Just(RequestKind::Ready)
        ],
        "[A-Z]{1,8}",
        proptest::collection::vec(any::<u8>(), 0..40),
    )
        .prop_map(|(kind, data_type, body)| Request {
            kind,
            data_type,
            body: if matches!(kind, RequestKind::Get | RequestKind::Stop) {
                Vec::new()
            } else {
                body
            },
        })
}

fn content() -> impl Strategy<Value = Content> {
    prop_oneof![
        [
            [finite(), finite(), finite(), finite()],
            [finite(), finite(), finite(), finite()],
            [finite(), finite(), finite(), finite()]
        ]
        .prop_map(|matrix| Content::Transform(TransformData { matrix })),
        image().prop_map(Content::Image),
        proptest::collection::vec(point(), 0..4).prop_map(Content::Point),
        (any::<u16>(), any::<i64>(), ascii(20), utf8(200)).prop_map(
            |(code, subcode, error_name, message)| Content::Status(Status {
                code,
                subcode,
                error_name,
                message
            })
        ),
        request().prop_map(Content::Request),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    (
        utf8(20),
        any::<u64>(),
        content(),
        any::<bool>(),
        any::<u32>(),
        proptest::collection::vec((utf8(30), utf8(60)), 0..4),
    )
        .prop_map(|(device, ts, content, v2, id, metadata)| {
            let m = Message::new(device, Timestamp::from_u64(ts), content);
            if v2 {
                m.with_metadata(id, metadata)
            } else {
                m
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn messages_round_trip(msg in message(), cut in any::<prop::sample::Index>()) {
        let bytes = msg.encode().unwrap();
        let (back, used) = Message::decode(&bytes).unwrap();
        prop_assert_eq!(used, bytes.len());
        prop_assert_eq!(&back, &msg);

        // The same bytes through the stream decoder, split at an arbitrary point.
        let at = cut.index(bytes.len() + 1);
        let mut d = Decoder::default();
        d.push(&bytes[..at]);
        let first = d.next_message().unwrap();
        d.push(&bytes[at..]);
        let got = match first {
            Some(m) => m,
            None => d.next_message().unwrap().unwrap(),
        };
        prop_assert_eq!(got, msg);
        prop_assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = Message::decode(&bytes);
        let mut d = Decoder::new(1 << 16);
        d.push(&bytes);
        for _ in 0..8 {
            if !matches!(d.next_message(), Ok(Some(_)) | Err(_)) {
                break;
            }
        }
    }

    #[test]
    fn changed_messages_never_panic_and_are_caught(
        msg in message(),
        pos in any::<prop::sample::Index>(),
        xor in 1u8..=255,
    ) {
        let mut bytes = msg.encode().unwrap();
        let i = pos.index(bytes.len());
        bytes[i] ^= xor;
        match Message::decode(&bytes) {
            // Only a changed timestamp, device name or type-independent header field can leave
            // a decodable message; a changed body byte must fail the CRC.
            Ok((m, _)) => prop_assert!(i < 58, "byte {} changed and still decoded: {:?}", i, m),
            Err(e) => {
                if i >= 58 {
                    prop_assert!(e.is_crc(), "body byte {} changed: {}", i, e);
                }
            }
        }
    }

    /// A body that has a valid CRC but random content is refused or decoded, never a panic.
    #[test]
    fn random_bodies_with_valid_crc_never_panic(
        ty in prop_oneof![Just("TRANSFORM"), Just("IMAGE"), Just("POINT"), Just("STATUS"), Just("GET_IMAGE"), Just("STT_TDATA")],
        version in 1u16..=2,
        body in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let mut out = version.to_be_bytes().to_vec();
        let mut t = ty.as_bytes().to_vec();
        t.resize(12, 0);
        out.extend(t);
        out.extend([0u8; 28]);
        out.extend((body.len() as u64).to_be_bytes());
        out.extend(telecho_igtl::crc64(&body).to_be_bytes());
        out.extend(&body);
        let _ = Message::decode(&out);
    }
}
