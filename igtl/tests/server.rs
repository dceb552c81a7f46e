//! The TCP server with raw socket clients: several clients at once, garbage and bad CRCs drop only
//! the client that sent them, GET_/STT_/STP_ requests, draining on shutdown.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use nalgebra::Matrix4;
use telecho_igtl::{
    status_code, Content, Decoder, Message, Request, RequestKind, Server, ServerConfig, Timestamp,
    TransformData,
};

fn transform(device: &str, x: f64) -> Message {
    let mut m = Matrix4::identity();
    m[(0, 3)] = x;
    Message::new(
        device,
        Timestamp::from_secs_f64(100.0 + x),
        Content::Transform(TransformData::from_matrix4(&m)),
    )
}

fn request(kind: RequestKind, data_type: &str, device: &str) -> Vec<u8> {
    Message::new(
        device,
        Timestamp::default(),
        Content::Request(Request {
            kind,
            data_type: data_type.into(),
            body: Vec::new(),
        }),
    )
    .encode()
    .unwrap()
}

struct Peer {
    stream: TcpStream,
    decoder: Decoder,
}

impl Peer {
    fn connect(server: &Server) -> Self {
        let stream = TcpStream::connect(server.local_addr()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        Self {
            stream,
            decoder: Decoder::default(),
        }
    }

    /// The next message within `timeout`; `None` on timeout or end of stream.
    fn next(&mut self, timeout: Duration) -> Option<Message> {
        let start = Instant::now();
        let mut buf = [0u8; 4096];
        loop {
            if let Some(m) = self.decoder.next_message().unwrap() {
                return Some(m);
            }
            if start.elapsed() > timeout {
                return None;
            }
            match self.stream.read(&mut buf) {
                Ok(0) => return None,
                Ok(n) => self.decoder.push(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return None,
            }
        }
    }

    /// True once the server has closed this connection.
    fn closed_within(&mut self, timeout: Duration) -> bool {
        let start = Instant::now();
        let mut buf = [0u8; 4096];
        while start.elapsed() < timeout {
            match self.stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return true,
            }
        }
        false
    }
}

const T: Duration = Duration::from_secs(5);

#[test]
fn clients_that_send_garbage_are_dropped_without_affecting_others() {
    let server = Server::bind("127.0.0.1:0", ServerConfig::default()).unwrap();
    let mut good = Peer::connect(&server);
    let mut garbage = Peer::connect(&server);
    let mut bad_crc = Peer::connect(&server);
    assert!(server.wait_for_clients(3, T));

    garbage
        .stream
        .write_all(b"GET / HTTP/1.1\r\nHost: telecho\r\n\r\nthis is not OpenIGTLink at all......")
        .unwrap();
    let mut corrupt = transform("Probe", 1.0).encode().unwrap();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xFF;
    bad_crc.stream.write_all(&corrupt).unwrap();
    assert!(garbage.closed_within(T), "garbage sender not dropped");
    assert!(bad_crc.closed_within(T), "bad-CRC sender not dropped");
    let start = Instant::now();
    while server.client_count() != 1 && start.elapsed() < T {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(server.client_count(), 1);

    // An unknown type with a valid header and CRC is skipped, not a reason to drop.
    let mut unknown = Vec::new();
    unknown.extend(1u16.to_be_bytes());
    unknown.extend(b"COLORT\0\0\0\0\0\0");
    unknown.extend([0u8; 20 + 8]);
    unknown.extend(2u64.to_be_bytes());
    unknown.extend(telecho_igtl::crc64(&[9, 9]).to_be_bytes());
    unknown.extend([9, 9]);
    good.stream.write_all(&unknown).unwrap();

    for i in 0..5 {
        assert_eq!(server.broadcast(&transform("Probe", i as f64)).unwrap(), 1);
    }
    for i in 0..5 {
        let m = good.next(T).expect("message for the good client");
        assert_eq!(m, transform("Probe", i as f64));
    }
    assert_eq!(server.client_count(), 1);
    server.shutdown();
    assert!(good.closed_within(T));
}

#[test]
fn get_stt_stp_requests_are_answered() {
    let server = Server::bind("127.0.0.1:0", ServerConfig::default()).unwrap();
    server.broadcast(&transform("Probe", 3.0)).unwrap();
    server.broadcast(&transform("Other", 4.0)).unwrap();
    let mut peer = Peer::connect(&server);
    assert!(server.wait_for_clients(1, T));

    peer.stream
        .write_all(&request(RequestKind::Get, "TRANS", "Probe"))
        .unwrap();
    assert_eq!(peer.next(T).unwrap(), transform("Probe", 3.0));

    // No IMAGE yet: a STATUS "not found" under the requested name.
    peer.stream
        .write_all(&request(RequestKind::Get, "IMAGE", "Image"))
        .unwrap();
    let m = peer.next(T).unwrap();
    assert_eq!(m.device_name, "Image");
    let Content::Status(s) = m.content else {
        panic!("{m:?}")
    };
    assert_eq!(s.code, status_code::NOT_FOUND);

    // Stop the stream: RTS_ then nothing; start it again: RTS_ then the stream.
    peer.stream
        .write_all(&request(RequestKind::Stop, "TRANS", ""))
        .unwrap();
    let m = peer.next(T).unwrap();
    assert_eq!(m.content.type_name(), "RTS_TRANS");
    assert_eq!(server.broadcast(&transform("Probe", 5.0)).unwrap(), 0);
    assert!(peer.next(Duration::from_millis(200)).is_none());
    peer.stream
        .write_all(&request(RequestKind::Start, "TRANS", ""))
        .unwrap();
    let m = peer.next(T).unwrap();
    assert_eq!(m.content.type_name(), "RTS_TRANS");
    assert_eq!(server.broadcast(&transform("Probe", 6.0)).unwrap(), 1);
    assert_eq!(peer.next(T).unwrap(), transform("Probe", 6.0));

    // GET_ with an empty device name: every TRANSFORM device's latest message.
    peer.stream
        .write_all(&request(RequestKind::Get, "TRANS", ""))
        .unwrap();
    let mut got = vec![peer.next(T).unwrap(), peer.next(T).unwrap()];
    got.sort_by(|a, b| a.device_name.cmp(&b.device_name));
    assert_eq!(got, vec![transform("Other", 4.0), transform("Probe", 6.0)]);
}

#[test]
fn shutdown_drains_queued_messages_and_a_departed_client_is_pruned() {
    let server = Server::bind("127.0.0.1:0", ServerConfig::default()).unwrap();
    let mut stays = Peer::connect(&server);
    let leaves = Peer::connect(&server);
    assert!(server.wait_for_clients(2, T));
    drop(leaves);
    let start = Instant::now();
    while server.client_count() != 1 && start.elapsed() < T {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(server.client_count(), 1);
    for i in 0..20 {
        server.broadcast(&transform("Probe", i as f64)).unwrap();
    }
    server.shutdown();
    for i in 0..20 {
        assert_eq!(stays.next(T).unwrap(), transform("Probe", i as f64));
    }
    assert!(stays.closed_within(T));
}
