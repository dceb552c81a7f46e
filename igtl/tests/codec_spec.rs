//! The codec against bytes written out by hand from the OpenIGTLink specification
//! (Documents/Protocol/header.md, transform.md, image.md, point.md, status.md, and the version 3
//! extended header), and its refusals of malformed input.

use nalgebra::Matrix4;
use telecho_igtl::codec::{HEADER_SIZE, IMAGE_HEADER_SIZE, POINT_ELEMENT_SIZE};
use telecho_igtl::{
    crc64, status_code, Content, Coordinate, Decoder, Endian, Header, Image, Message, PointElement,
    Request, RequestKind, ScalarType, Status, Timestamp, TransformData,
};

/// Bit-at-a-time CRC-64/ECMA-182 (polynomial division of the message, MSB first), written
/// independently of the table-driven one in the crate.
fn crc64_bitwise(data: &[u8]) -> u64 {
    let mut reg: u64 = 0;
    for &byte in data {
        for bit in (0..8).rev() {
            let top = (reg >> 63) & 1;
            let input = u64::from((byte >> bit) & 1);
            reg <<= 1;
            if top ^ input == 1 {
                reg ^= 0x42F0_E1EB_A9EA_3693;
            }
        }
    }
    reg
}

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn padded(s: &str, len: usize) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.resize(len, 0);
    v
}

#[test]
fn crc64_matches_the_ecma182_check_value() {
    // CRC catalogue "CRC-64/ECMA-182": check = 0x6C40DF5F0B497347 for "123456789".
    assert_eq!(crc64(b"123456789"), 0x6C40_DF5F_0B49_7347);
    assert_eq!(crc64_bitwise(b"123456789"), 0x6C40_DF5F_0B49_7347);
    assert_eq!(crc64(b""), 0);
    // A single 0x01 byte leaves the polynomial shifted by 56 bits, reduced: the table entry 1.
    assert_eq!(crc64(&[1]), crc64_bitwise(&[1]));
    let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
    assert_eq!(crc64(&data), crc64_bitwise(&data));
}

#[test]
fn transform_message_bytes_follow_the_spec() {
    // 90° about z: R = [[0, −1, 0], [1, 0, 0], [0, 0, 1]], t = (1, 2, 3) mm.
    let m = Matrix4::new(
        0.0, -1.0, 0.0, 1.0, //
        1.0, 0.0, 0.0, 2.0, //
        0.0, 0.0, 1.0, 3.0, //
        0.0, 0.0, 0.0, 1.0,
    );
    let msg = Message::new(
        "Probe",
        Timestamp {
            seconds: 0x0102_0304,
            fraction: 0x8000_0000,
        },
        Content::Transform(TransformData::from_matrix4(&m)),
    );
    let bytes = msg.encode().unwrap();
    // Body: column order R11 R21 R31 R12 R22 R32 R13 R23 R33 TX TY TZ, big-endian float32.
    let body = hex("00000000 3F800000 00000000 \
         BF800000 00000000 00000000 \
         00000000 00000000 3F800000 \
         3F800000 40000000 40400000");
    let mut want = hex("0001"); // header version 1
    want.extend(padded("TRANSFORM", 12));
    want.extend(padded("Probe", 20));
    want.extend(hex("01020304 80000000")); // seconds, fraction
    want.extend(hex("00000000 00000030")); // body size 48
    want.extend(crc64_bitwise(&body).to_be_bytes());
    assert_eq!(want.len(), HEADER_SIZE);
    want.extend(&body);
    assert_eq!(bytes, want);

    let (back, used) = Message::decode(&bytes).unwrap();
    assert_eq!(used, HEADER_SIZE + 48);
    assert_eq!(back, msg);
    let Content::Transform(t) = back.content else {
        panic!("not a transform")
    };
    assert_eq!(t.to_matrix4(), m);
    let h = Header::decode(&bytes).unwrap();
    assert_eq!(h.timestamp.as_secs_f64(), 16_909_060.5);
}

#[test]
fn image_header_fields_follow_the_spec() {
    // 3 × 2 × 1 uint8, i axis 0.5 mm along x, j axis 0.25 mm along −z, k axis 1 mm along y,
    // pixel (0, 0, 0) at (10, 20, 30) mm: the centre (index (1, 0.5, 0)) is (10.5, 20, 29.875).
    let ijk = Matrix4::new(
        0.5, 0.0, 0.0, 10.0, //
        0.0, 0.0, 1.0, 20.0, //
        0.0, -0.25, 0.0, 30.0, //
        0.0, 0.0, 0.0, 1.0,
    );
    let pixels = vec![1, 2, 3, 4, 5, 250];
    let image = Image::from_ijk_to_world(
        [3, 2, 1],
        ScalarType::Uint8,
        Coordinate::Lps,
        &ijk,
        pixels.clone(),
    )
    .unwrap();
    let msg = Message::new("Image", Timestamp::default(), Content::Image(image));
    let bytes = msg.encode().unwrap();
    let mut body = hex("0001 01 03 02 02"); // version, components, scalar uint8, little, LPS
    body.extend(hex("0003 0002 0001")); // size
    body.extend(hex("3F000000 00000000 00000000")); // T: i axis × spacing
    body.extend(hex("00000000 00000000 BE800000")); // S: j axis × spacing
    body.extend(hex("00000000 3F800000 00000000")); // N: k axis × spacing
    body.extend(hex("41280000 41A00000 41EF0000")); // P: centre (10.5, 20, 29.875)
    body.extend(hex("0000 0000 0000 0003 0002 0001")); // sub-volume offset and size
    assert_eq!(body.len(), IMAGE_HEADER_SIZE);
    body.extend(&pixels);
    assert_eq!(&bytes[HEADER_SIZE..], &body[..]);
    assert_eq!(&bytes[2..14], &padded("IMAGE", 12)[..]);
    assert_eq!(&bytes[42..50], &(body.len() as u64).to_be_bytes());

    let (back, _) = Message::decode(&bytes).unwrap();
    let Content::Image(im) = back.content else {
        panic!("not an image")
    };
    assert_eq!(im.data, pixels);
    assert_eq!(im.ijk_to_world(), ijk);
    assert_eq!(im.spacing(), [0.5, 0.25, 1.0]);
    assert_eq!(im.endian, Endian::Little);
}

#[test]
fn point_elements_follow_the_spec() {
    let p = PointElement {
        name: "L3_spinous".into(),
        group: "Landmark".into(),
        rgba: [255, 0, 0, 255],
        position: [1.0, -1.0, 2.0],
        diameter: 3.0,
        owner: "Image".into(),
    };
    let msg = Message::new(
        "Landmarks",
        Timestamp::default(),
        Content::Point(vec![p.clone(), p]),
    );
    let bytes = msg.encode().unwrap();
    let body = &bytes[HEADER_SIZE..];
    assert_eq!(body.len(), 2 * POINT_ELEMENT_SIZE);
    let e = &body[POINT_ELEMENT_SIZE..];
    assert_eq!(&e[..64], &padded("L3_spinous", 64)[..]);
    assert_eq!(&e[64..96], &padded("Landmark", 32)[..]);
    assert_eq!(&e[96..100], &[255, 0, 0, 255]);
    assert_eq!(
        &e[100..116],
        &hex("3F800000 BF800000 40000000 40400000")[..]
    );
    assert_eq!(&e[116..136], &padded("Image", 20)[..]);
    assert_eq!(Message::decode(&bytes).unwrap().0, msg);
}

#[test]
fn status_follows_the_spec() {
    let msg = Message::new(
        "telecho",
        Timestamp::default(),
        Content::Status(Status {
            code: status_code::OK,
            subcode: -2,
            error_name: "OK".into(),
            message: "streaming".into(),
        }),
    );
    let bytes = msg.encode().unwrap();
    let mut body = hex("0001 FFFFFFFFFFFFFFFE");
    body.extend(padded("OK", 20));
    body.extend(b"streaming\0");
    assert_eq!(&bytes[HEADER_SIZE..], &body[..]);
    assert_eq!(Message::decode(&bytes).unwrap().0, msg);
}

#[test]
fn version2_extended_header_and_metadata_follow_the_spec() {
    let msg = Message::new(
        "Probe",
        Timestamp::default(),
        Content::Transform(TransformData::from_matrix4(&Matrix4::identity())),
    )
    .with_metadata(7, vec![("Frame".into(), "12".into())]);
    let bytes = msg.encode().unwrap();
    assert_eq!(&bytes[..2], &[0, 2]);
    let body = &bytes[HEADER_SIZE..];
    // Extended header: its size 12, metadata header size 2 + 8, metadata size 5 + 2, message id 7.
    assert_eq!(&body[..12], &hex("000C 000A 00000007 00000007")[..]);
    assert_eq!(&body[12..16], &hex("3F800000")[..]); // R11 of the content
    let meta = &body[12 + 48..];
    assert_eq!(meta, &hex("0001 0005 0003 00000002 4672616D65 3132")[..]);
    assert_eq!(Message::decode(&bytes).unwrap().0, msg);
}

#[test]
fn requests_decode() {
    for (kind, ty) in [
        (RequestKind::Get, "TRANS"),
        (RequestKind::Get, "IMAGE"),
        (RequestKind::Get, "POINT"),
        (RequestKind::Get, "STATUS"),
        (RequestKind::Stop, "IMAGE"),
        (RequestKind::Start, "IMAGE"),
    ] {
        let msg = Message::new(
            "",
            Timestamp::default(),
            Content::Request(Request {
                kind,
                data_type: ty.into(),
                body: vec![],
            }),
        );
        let bytes = msg.encode().unwrap();
        assert_eq!(
            &bytes[2..14],
            &padded(&format!("{}{ty}", kind.prefix()), 12)[..]
        );
        assert_eq!(&bytes[42..50], &[0; 8]);
        assert_eq!(Message::decode(&bytes).unwrap().0, msg);
    }
    // TRANSFORM's requests are spelled TRANS: GET_TRANSFORM would not fit the type field.
    let too_long = Message::new(
        "",
        Timestamp::default(),
        Content::Request(Request {
            kind: RequestKind::Get,
            data_type: "TRANSFORM".into(),
            body: vec![],
        }),
    );
    assert!(too_long.encode().unwrap_err().is_encode());
    // STT_TDATA: resolution (uint32, ms) and coordinate name (char[32]).
    let mut body = 50u32.to_be_bytes().to_vec();
    body.extend(padded("Patient", 32));
    let msg = Message::new(
        "Tracker",
        Timestamp::default(),
        Content::Request(Request {
            kind: RequestKind::Start,
            data_type: "TDATA".into(),
            body,
        }),
    );
    assert_eq!(Message::decode(&msg.encode().unwrap()).unwrap().0, msg);
}

/// A raw message with any type and body and a correct CRC.
fn raw(version: u16, type_name: &str, body: &[u8]) -> Vec<u8> {
    let mut out = version.to_be_bytes().to_vec();
    out.extend(padded(type_name, 12));
    out.extend(padded("dev", 20));
    out.extend([0; 8]);
    out.extend((body.len() as u64).to_be_bytes());
    out.extend(crc64_bitwise(body).to_be_bytes());
    out.extend(body);
    out
}

#[test]
fn malformed_input_gives_clear_errors() {
    let good = Message::new(
        "Probe",
        Timestamp::default(),
        Content::Transform(TransformData::from_matrix4(&Matrix4::identity())),
    )
    .encode()
    .unwrap();

    let mut bad_crc = good.clone();
    bad_crc[HEADER_SIZE + 5] ^= 0x10;
    let e = Message::decode(&bad_crc).unwrap_err();
    assert!(e.is_crc(), "{e}");
    assert!(e.to_string().contains("CRC-64"), "{e}");

    let mut bad_version = good.clone();
    bad_version[1] = 9;
    let e = Message::decode(&bad_version).unwrap_err();
    assert!(e.is_header() && e.to_string().contains("version 9"), "{e}");

    let e = Message::decode(&good[..good.len() - 1]).unwrap_err();
    assert!(e.to_string().contains("truncated"), "{e}");
    let e = Message::decode(&good[..20]).unwrap_err();
    assert!(e.is_header(), "{e}");

    let e = Message::decode(&raw(1, "TRANSFORM", &[0; 47])).unwrap_err();
    assert!(e.is_body() && e.to_string().contains("47 bytes"), "{e}");

    let e = Message::decode(&raw(1, "FOO", &[1, 2, 3])).unwrap_err();
    assert!(e.is_unknown_type() && e.to_string().contains("FOO"), "{e}");

    let e = Message::decode(&raw(1, "GET_IMAGE", &[0])).unwrap_err();
    assert!(e.is_body(), "{e}");

    let e = Message::decode(&raw(1, "POINT", &[0; 135])).unwrap_err();
    assert!(e.is_body(), "{e}");

    let e = Message::decode(&raw(1, "STATUS", &[0; 29])).unwrap_err();
    assert!(e.is_body(), "{e}");

    // Image whose pixels are one byte short of its size.
    let mut img = hex("0001 01 03 02 02 0002 0002 0001");
    img.extend([0; 48]);
    img.extend(hex("0000 0000 0000 0002 0002 0001"));
    img.extend([7; 3]);
    let e = Message::decode(&raw(1, "IMAGE", &img)).unwrap_err();
    assert!(e.is_body() && e.to_string().contains("needs 4"), "{e}");
    // ... and with an unknown scalar type.
    img.push(7);
    img[3] = 8;
    let e = Message::decode(&raw(1, "IMAGE", &img)).unwrap_err();
    assert!(e.to_string().contains("scalar type 8"), "{e}");

    // Version 2 with metadata sizes that do not fit.
    let mut body = hex("000C 000A 00000100 00000000");
    body.extend([0; 48]);
    let e = Message::decode(&raw(2, "TRANSFORM", &body)).unwrap_err();
    assert!(e.is_body() && e.to_string().contains("do not fit"), "{e}");

    // A non-finite transform is refused both ways.
    let mut nan = vec![0u8; 48];
    nan[..4].copy_from_slice(&f32::NAN.to_be_bytes());
    assert!(Message::decode(&raw(1, "TRANSFORM", &nan))
        .unwrap_err()
        .is_body());
    let mut m = Matrix4::identity();
    m[(0, 3)] = f64::INFINITY;
    let e = Message::new(
        "x",
        Timestamp::default(),
        Content::Transform(TransformData::from_matrix4(&m)),
    )
    .encode()
    .unwrap_err();
    assert!(e.is_encode(), "{e}");

    // Names longer than their fields are refused on encode.
    let e = Message::new(
        "a device name longer than twenty bytes",
        Timestamp::default(),
        Content::Transform(TransformData::from_matrix4(&Matrix4::identity())),
    )
    .encode()
    .unwrap_err();
    assert!(
        e.is_encode() && e.to_string().contains("device name"),
        "{e}"
    );
}

#[test]
fn decoder_takes_a_stream_in_pieces_and_skips_unknown_types() {
    let a = Message::new(
        "A",
        Timestamp::default(),
        Content::Status(Status {
            code: status_code::OK,
            subcode: 0,
            error_name: "OK".into(),
            message: String::new(),
        }),
    );
    let mut stream = a.encode().unwrap();
    stream.extend(raw(1, "COLORT", &[1, 2, 3, 4]));
    stream.extend(a.encode().unwrap());
    let mut d = Decoder::default();
    let mut got = Vec::new();
    let mut unknown = 0;
    for byte in &stream {
        d.push(std::slice::from_ref(byte));
        loop {
            match d.next_message() {
                Ok(Some(m)) => got.push(m),
                Ok(None) => break,
                Err(e) if e.is_unknown_type() => unknown += 1,
                Err(e) => panic!("{e}"),
            }
        }
    }
    assert_eq!(got, vec![a.clone(), a]);
    assert_eq!(unknown, 1);
    assert_eq!(d.buffered(), 0);

    // A header announcing a huge body is refused at once.
    let mut huge = raw(1, "IMAGE", &[]);
    huge[42..50].copy_from_slice(&u64::MAX.to_be_bytes());
    let mut d = Decoder::new(1 << 20);
    d.push(&huge);
    let e = d.next_message().unwrap_err();
    assert!(
        e.is_header() && e.to_string().contains("over the limit"),
        "{e}"
    );
}

#[test]
fn timestamps_are_seconds_and_binary_fractions() {
    let t = Timestamp::from_secs_f64(1.25);
    assert_eq!((t.seconds, t.fraction), (1, 0x4000_0000));
    assert_eq!(t.to_u64(), 0x0000_0001_4000_0000);
    assert_eq!(Timestamp::from_u64(t.to_u64()), t);
    assert_eq!(t.as_secs_f64(), 1.25);
    assert_eq!(Timestamp::from_secs_f64(f64::NAN), Timestamp::default());
    assert_eq!(Timestamp::from_secs_f64(-3.0), Timestamp::default());
}
