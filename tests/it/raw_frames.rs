//! Malformed / unexpected frames over a raw socket. The broker must answer
//! with the right connection.close (code, text, class/method ids), never
//! crash, and keep serving new connections.
//!
//! Where RabbitMQ's reply text embeds Erlang term syntax (FRAME_ERROR
//! details such as `<<0,20,0,10,0>>`), the test checks the code and the
//! text's prefix, and the full RabbitMQ 3.10 text is given in a comment.
use crate::common::raw::{self, assert_broker_alive, Close, Enc, RawConn};
use crate::common::*;
use std::time::Duration;

/// Handshake and open channel 1.
fn open_ch1(broker: &Broker) -> RawConn {
    let (mut c, _) = RawConn::open(&broker.addr());
    c.open_channel(1);
    c
}

fn check_close(close: &Close, code: u16, text: &str, class_id: u16, method_id: u16) {
    assert_eq!(
        (
            close.code,
            close.text.as_str(),
            close.class_id,
            close.method_id
        ),
        (code, text, class_id, method_id),
        "unexpected connection.close"
    );
}

fn check_close_prefix(close: &Close, code: u16, prefix: &str) {
    assert_eq!(close.code, code, "unexpected close {close:?}");
    assert!(
        close.text.starts_with(prefix),
        "close text {:?} should start with {prefix:?}",
        close.text
    );
    assert_eq!((close.class_id, close.method_id), (0, 0), "{close:?}");
}

fn still_alive(broker: &mut Broker) {
    assert!(broker.is_alive(), "broker process died");
    assert_broker_alive(&broker.addr());
}

fn queue_declare_args(name: &str) -> Vec<u8> {
    Enc::new().u16(0).shortstr(name).u8(0).table(&[]).done()
}

#[test]
fn bad_frame_end_octet_closes_connection_501() {
    let mut broker = Broker::start();
    let mut c = open_ch1(&broker);
    let mut f = raw::method_frame(2, 20, 10, &Enc::new().shortstr("").done());
    *f.last_mut().unwrap() = 0x00;
    c.send(&f).unwrap();
    let close = c.expect_connection_close();
    // RabbitMQ 3.10: "FRAME_ERROR - type 1, all octets = <<0,20,0,10,0>>: {invalid_frame_end_marker,0}"
    check_close_prefix(&close, 501, "FRAME_ERROR - ");
    c.expect_eof(WAIT);
    still_alive(&mut broker);
}

#[test]
fn frame_larger_than_frame_max_closes_connection_501() {
    let mut broker = Broker::start();
    let mut c = open_ch1(&broker);
    let mut payload = Enc::new().u16(50).u16(10).done();
    payload.resize(200_004, 0);
    let _ = c.send(&raw::frame(raw::FRAME_METHOD, 1, &payload));
    let close = c.expect_connection_close();
    // RabbitMQ 3.10: "FRAME_ERROR - type 1, all octets = <<>>: {frame_too_large,200004,131064}"
    // for a 200004-byte payload
    // (4 bytes of class/method ids + 200000 zero bytes); 131064 is
    // frame_max - 8, the largest payload allowed.
    check_close_prefix(&close, 501, "FRAME_ERROR - ");
    c.expect_eof(WAIT);
    still_alive(&mut broker);
}

#[test]
fn unknown_frame_type_closes_connection_501() {
    let mut broker = Broker::start();
    let mut c = open_ch1(&broker);
    c.send(&raw::frame(9, 0, b"abc")).unwrap();
    let close = c.expect_connection_close();
    // RabbitMQ 3.10: "FRAME_ERROR - type 9, all octets = <<\"abc\">>: unknown_frame"
    check_close_prefix(&close, 501, "FRAME_ERROR - ");
    still_alive(&mut broker);
}

#[test]
fn empty_method_frame_closes_connection_501() {
    let mut broker = Broker::start();
    let mut c = open_ch1(&broker);
    c.send(&raw::frame(raw::FRAME_METHOD, 0, b"")).unwrap();
    let close = c.expect_connection_close();
    // RabbitMQ 3.10: "FRAME_ERROR - type 1, all octets = <<>>: unknown_frame"
    check_close_prefix(&close, 501, "FRAME_ERROR - ");
    still_alive(&mut broker);
}

#[test]
fn truncated_method_arguments_close_connection_501() {
    let mut broker = Broker::start();
    let mut c = open_ch1(&broker);
    // queue.declare with only one argument byte
    c.send(&raw::method_frame(1, 50, 10, &[0])).unwrap();
    let close = c.expect_connection_close();
    check_close(&close, 501, "FRAME_ERROR - cannot decode <<0>>", 50, 10);
    still_alive(&mut broker);
}

#[test]
fn garbage_bytes_after_handshake_close_connection_501() {
    let mut broker = Broker::start();
    let mut c = open_ch1(&broker);
    let garbage: Vec<u8> = [0xde, 0xad, 0xbe, 0xef].repeat(8);
    let _ = c.send(&garbage);
    let close = c.expect_connection_close();
    // RabbitMQ 3.10: "FRAME_ERROR - type 222, all octets = <<>>: {frame_too_large,4024348094,131064}"
    check_close_prefix(&close, 501, "FRAME_ERROR - ");
    still_alive(&mut broker);
}

#[test]
fn method_frame_for_unknown_class_or_method_drops_connection() {
    // RabbitMQ 3.10 cannot decode the method and drops the TCP connection
    // without sending connection.close. A connection.close with 503
    // (COMMAND_INVALID) or 540 (NOT_IMPLEMENTED) is accepted too.
    let mut broker = Broker::start();
    for (class, method) in [(999u16, 1u16), (60, 999)] {
        let mut c = open_ch1(&broker);
        c.send(&raw::method_frame(1, class, method, &[])).unwrap();
        c.set_read_timeout(Duration::from_secs(5));
        loop {
            match c.read_frame() {
                Ok(f) if f.method() == Some((10, 50)) => {
                    let mut d = raw::Dec::new(f.args());
                    let code = d.u16();
                    assert!(
                        code == 503 || code == 540,
                        "unexpected close code {code} for {class}.{method}"
                    );
                    let _ = c.send(&raw::method_frame(0, 10, 51, &[]));
                }
                Ok(f) => panic!("unexpected frame {f:?}"),
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    panic!("connection not closed after unknown method {class}.{method}")
                }
                Err(_) => break,
            }
        }
        still_alive(&mut broker);
    }
}

#[test]
fn content_header_without_publish_closes_connection_505() {
    let mut broker = Broker::start();
    let mut c = open_ch1(&broker);
    c.send(&raw::content_header_frame(1, 3)).unwrap();
    let close = c.expect_connection_close();
    check_close(
        &close,
        505,
        "UNEXPECTED_FRAME - expected method frame, got non method frame instead",
        0,
        0,
    );
    still_alive(&mut broker);
}

#[test]
fn body_frame_without_publish_closes_connection_505() {
    let mut broker = Broker::start();
    let mut c = open_ch1(&broker);
    c.send(&raw::body_frame(1, b"abc")).unwrap();
    let close = c.expect_connection_close();
    check_close(
        &close,
        505,
        "UNEXPECTED_FRAME - expected method frame, got non method frame instead",
        0,
        0,
    );
    still_alive(&mut broker);
}

#[test]
fn body_frame_on_unopened_channel_closes_connection_505() {
    // RabbitMQ 3.10 answers 505 UNEXPECTED_FRAME here (not 504
    // CHANNEL_ERROR): a non-method frame is checked before the channel.
    let mut broker = Broker::start();
    let mut c = open_ch1(&broker);
    c.send(&raw::body_frame(7, b"abc")).unwrap();
    let close = c.expect_connection_close();
    check_close(
        &close,
        505,
        "UNEXPECTED_FRAME - expected method frame, got non method frame instead",
        0,
        0,
    );
    still_alive(&mut broker);
}

#[test]
fn method_on_unopened_channel_closes_connection_504() {
    let mut broker = Broker::start();
    let mut c = open_ch1(&broker);
    c.send_method(3, 50, 10, &queue_declare_args("q"));
    let close = c.expect_connection_close();
    check_close(
        &close,
        504,
        "CHANNEL_ERROR - expected 'channel.open'",
        50,
        10,
    );
    still_alive(&mut broker);
}

#[test]
fn channel_method_on_channel_zero_closes_connection_504() {
    let mut broker = Broker::start();
    let mut c = open_ch1(&broker);
    c.send_method(0, 60, 40, &raw::basic_publish_args("", "x", false));
    let close = c.expect_connection_close();
    check_close(
        &close,
        504,
        "CHANNEL_ERROR - unexpected method in connection state running",
        60,
        40,
    );
    still_alive(&mut broker);
}

#[test]
fn heartbeat_on_nonzero_channel_closes_connection_505() {
    let mut broker = Broker::start();
    let mut c = open_ch1(&broker);
    c.send(&raw::frame(raw::FRAME_HEARTBEAT, 1, b"")).unwrap();
    let close = c.expect_connection_close();
    check_close(
        &close,
        505,
        "UNEXPECTED_FRAME - type 8, all octets = <<>>",
        0,
        0,
    );
    still_alive(&mut broker);
}

#[test]
fn method_instead_of_content_header_closes_connection_505() {
    let mut broker = Broker::start();
    let mut c = open_ch1(&broker);
    let mut bytes = raw::method_frame(1, 60, 40, &raw::basic_publish_args("", "x", false));
    // basic.qos where the content header should be
    bytes.extend(raw::method_frame(
        1,
        60,
        10,
        &Enc::new().u32(0).u16(1).u8(0).done(),
    ));
    c.send(&bytes).unwrap();
    let close = c.expect_connection_close();
    check_close(
        &close,
        505,
        "UNEXPECTED_FRAME - expected content header for class 60, got non content header frame instead",
        60,
        40,
    );
    still_alive(&mut broker);
}

#[test]
fn content_header_of_wrong_class_closes_connection_505() {
    let mut broker = Broker::start();
    let mut c = open_ch1(&broker);
    let mut bytes = raw::method_frame(1, 60, 40, &raw::basic_publish_args("", "x", false));
    bytes.extend(raw::frame(
        raw::FRAME_HEADER,
        1,
        &Enc::new().u16(50).u16(0).u64(3).u16(0).done(),
    ));
    c.send(&bytes).unwrap();
    let close = c.expect_connection_close();
    check_close(
        &close,
        505,
        "UNEXPECTED_FRAME - expected content header for class 60, got one for class 50 instead",
        60,
        40,
    );
    still_alive(&mut broker);
}

#[test]
fn connection_method_on_nonzero_channel_closes_connection_503() {
    let mut broker = Broker::start();
    let mut c = open_ch1(&broker);
    let args = Enc::new().u16(200).shortstr("x").u16(0).u16(0).done();
    c.send_method(1, 10, 50, &args);
    let close = c.expect_connection_close();
    check_close(
        &close,
        503,
        "COMMAND_INVALID - unimplemented method",
        10,
        50,
    );
    still_alive(&mut broker);
}

#[test]
fn publish_split_across_frames_is_reassembled() {
    // A well-formed publish whose body is split over several body frames.
    let broker = Broker::start();
    let mut c = open_ch1(&broker);
    let q = unique("raw-split");
    c.send_method(1, 50, 10, &queue_declare_args(&q));
    c.expect_method(1, 50, 11);
    let mut bytes = raw::method_frame(1, 60, 40, &raw::basic_publish_args("", &q, false));
    bytes.extend(raw::content_header_frame(1, 9));
    for part in [&b"abc"[..], b"def", b"ghi"] {
        bytes.extend(raw::body_frame(1, part));
    }
    c.send(&bytes).unwrap();
    // basic.get
    c.send_method(1, 60, 70, &Enc::new().u16(0).shortstr(&q).u8(1).done());
    c.expect_method(1, 60, 71);
    let h = c.read_non_heartbeat();
    assert_eq!(h.typ, raw::FRAME_HEADER);
    let mut body = Vec::new();
    while body.len() < 9 {
        let f = c.read_non_heartbeat();
        assert_eq!(f.typ, raw::FRAME_BODY);
        body.extend_from_slice(&f.payload);
    }
    assert_eq!(body, b"abcdefghi");
    c.send_method(1, 50, 40, &Enc::new().u16(0).shortstr(&q).u8(0).done());
    c.expect_method(1, 50, 41);
    c.close();
}

#[test]
fn interleaved_publishes_on_two_channels_are_accepted() {
    // Content frames of different channels may interleave on the wire.
    let broker = Broker::start();
    let mut c = open_ch1(&broker);
    c.open_channel(2);
    let q = unique("raw-interleave");
    c.send_method(1, 50, 10, &queue_declare_args(&q));
    c.expect_method(1, 50, 11);
    let mut bytes = Vec::new();
    bytes.extend(raw::method_frame(
        1,
        60,
        40,
        &raw::basic_publish_args("", &q, false),
    ));
    bytes.extend(raw::method_frame(
        2,
        60,
        40,
        &raw::basic_publish_args("", &q, false),
    ));
    bytes.extend(raw::content_header_frame(1, 2));
    bytes.extend(raw::content_header_frame(2, 2));
    bytes.extend(raw::body_frame(2, b"c2"));
    bytes.extend(raw::body_frame(1, b"c1"));
    c.send(&bytes).unwrap();
    // queue.declare passive until both arrived
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        c.send_method(
            1,
            50,
            10,
            &Enc::new().u16(0).shortstr(&q).u8(1).table(&[]).done(),
        );
        let ok = c.expect_method(1, 50, 11);
        let mut d = raw::Dec::new(&ok);
        d.shortstr();
        if d.u32() == 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "messages not enqueued"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    c.send_method(1, 50, 40, &Enc::new().u16(0).shortstr(&q).u8(0).done());
    c.expect_method(1, 50, 41);
    c.close();
}

// ---------------------------------------------------------------------------
// Nesting depth. amq-protocol's table parser recurses once per level; a 9 KB frame
// of 1,200 nested tables used to overflow a worker's stack and abort the broker,
// before login (client properties, AMQPLAIN) and after (arguments, headers).
// ---------------------------------------------------------------------------

/// A length-prefixed table `depth` levels deep (the outer table is level 1), built
/// without recursion: `{k: {k: ... {}}}`.
fn deep_table(depth: usize) -> Vec<u8> {
    let mut t = vec![0, 0, 0, 0];
    for _ in 1..depth {
        let mut payload = vec![1, b'k', b'F'];
        payload.extend_from_slice(&t);
        t = (payload.len() as u32).to_be_bytes().to_vec();
        t.extend_from_slice(&payload);
    }
    t
}

/// The deepest tables warren decodes (warren::protocol::table::MAX_DEPTH).
const MAX_DEPTH: usize = 64;

fn expect_syntax_close(c: &mut RawConn, class_id: u16, method_id: u16) {
    let close = c.expect_connection_close();
    assert_eq!(close.code, 502, "{close:?}");
    assert!(close.text.starts_with("SYNTAX_ERROR - "), "{close:?}");
    assert!(close.text.contains("nested deeper than 64"), "{close:?}");
    assert_eq!(
        (close.class_id, close.method_id),
        (class_id, method_id),
        "{close:?}"
    );
    c.expect_eof(WAIT);
}

#[test]
fn deeply_nested_client_properties_close_502_and_the_broker_lives() {
    let mut broker = Broker::start();
    let mut c = RawConn::connect(&broker.addr());
    c.send_protocol_header();
    c.read_start();
    let args = Enc::new()
        .raw(&deep_table(400))
        .shortstr("PLAIN")
        .longstr(b"\0guest\0guest")
        .shortstr("en_US")
        .done();
    // Within the 4096 bytes a frame may have before tuning, and far deeper than 64.
    assert!(args.len() + 4 <= 4096);
    c.send_method(0, 10, 11, &args);
    expect_syntax_close(&mut c, 10, 11);
    still_alive(&mut broker);
}

#[test]
fn deeply_nested_amqplain_response_is_refused_and_the_broker_lives() {
    let mut broker = Broker::start();
    let mut c = RawConn::connect(&broker.addr());
    c.send_protocol_header();
    c.read_start();
    c.send_start_ok("AMQPLAIN", &deep_table(400)[4..]);
    // Refused as any unreadable AMQPLAIN response is: the connection goes, nothing else.
    let _ = c.read_frame();
    c.expect_eof(WAIT);
    still_alive(&mut broker);
}

/// Every client method that carries a table, with the fields before it; the table goes last.
fn methods_with_tables() -> Vec<(u16, u16, Enc)> {
    let q = unique("deep-q");
    vec![
        (
            40,
            10,
            Enc::new()
                .u16(0)
                .shortstr("deep-x")
                .shortstr("direct")
                .u8(0),
        ),
        (
            40,
            30,
            Enc::new()
                .u16(0)
                .shortstr("amq.direct")
                .shortstr("amq.fanout")
                .shortstr("k")
                .u8(0),
        ),
        (
            40,
            40,
            Enc::new()
                .u16(0)
                .shortstr("amq.direct")
                .shortstr("amq.fanout")
                .shortstr("k")
                .u8(0),
        ),
        (50, 10, Enc::new().u16(0).shortstr(&q).u8(0)),
        (
            50,
            20,
            Enc::new()
                .u16(0)
                .shortstr(&q)
                .shortstr("amq.direct")
                .shortstr("k")
                .u8(0),
        ),
        (
            50,
            50,
            Enc::new()
                .u16(0)
                .shortstr(&q)
                .shortstr("amq.direct")
                .shortstr("k"),
        ),
        (
            60,
            20,
            Enc::new().u16(0).shortstr(&q).shortstr("ctag").u8(0),
        ),
    ]
}

#[test]
fn deeply_nested_method_arguments_close_502_and_the_broker_lives() {
    let mut broker = Broker::start();
    for (class_id, method_id, fields) in methods_with_tables() {
        let mut c = open_ch1(&broker);
        c.send_method(
            1,
            class_id,
            method_id,
            &fields.raw(&deep_table(1200)).done(),
        );
        expect_syntax_close(&mut c, class_id, method_id);
        // One level past the bound is refused the same way.
        let mut c = open_ch1(&broker);
        let (_, _, fields) = methods_with_tables().remove(0);
        c.send_method(1, 40, 10, &fields.raw(&deep_table(MAX_DEPTH + 1)).done());
        expect_syntax_close(&mut c, 40, 10);
        still_alive(&mut broker);
    }
}

/// A content header with a headers table and nothing else.
fn header_with_headers(body_size: u64, headers: &[u8]) -> Vec<u8> {
    let p = Enc::new()
        .u16(60)
        .u16(0)
        .u64(body_size)
        .u16(1 << 13)
        .raw(headers)
        .done();
    raw::frame(raw::FRAME_HEADER, 1, &p)
}

#[test]
fn deeply_nested_message_headers_close_502_and_the_broker_lives() {
    let mut broker = Broker::start();
    for exchange in ["amq.headers", "amq.direct", ""] {
        let mut c = open_ch1(&broker);
        let mut bytes =
            raw::method_frame(1, 60, 40, &raw::basic_publish_args(exchange, "k", false));
        bytes.extend(header_with_headers(1, &deep_table(1200)));
        bytes.extend(raw::body_frame(1, b"x"));
        c.send(&bytes).unwrap();
        let close = c.expect_connection_close();
        assert_eq!(
            (close.code, close.class_id, close.method_id),
            (502, 60, 40),
            "{close:?}"
        );
        c.expect_eof(WAIT);
        still_alive(&mut broker);
    }
}

#[test]
fn tables_nested_to_the_bound_are_declared_routed_and_delivered_unchanged() {
    let broker = Broker::start();
    let mut c = open_ch1(&broker);
    let q = unique("deep-ok");
    // A queue argument nested MAX_DEPTH levels (counting the arguments table itself).
    let mut args = Enc::new().u16(0).shortstr(&q).u8(0).done();
    let nested = deep_table(MAX_DEPTH - 1);
    let mut table = vec![1, b'n', b'F'];
    table.extend_from_slice(&nested);
    args.extend_from_slice(&(table.len() as u32).to_be_bytes());
    args.extend_from_slice(&table);
    c.send_method(1, 50, 10, &args);
    c.expect_method(1, 50, 11);
    // Bound through the headers exchange on a top-level key of a MAX_DEPTH-deep headers table.
    let bind = Enc::new()
        .u16(0)
        .shortstr(&q)
        .shortstr("amq.headers")
        .shortstr("")
        .u8(0)
        .table(&[
            ("x-match", raw::Value::LongStr(b"any".to_vec())),
            // A void value matches on the key's presence (as in RabbitMQ).
            ("k", raw::Value::Void),
        ])
        .done();
    c.send_method(1, 50, 20, &bind);
    c.expect_method(1, 50, 21);
    let headers = deep_table(MAX_DEPTH);
    let mut bytes = raw::method_frame(
        1,
        60,
        40,
        &raw::basic_publish_args("amq.headers", "", false),
    );
    bytes.extend(header_with_headers(3, &headers));
    bytes.extend(raw::body_frame(1, b"abc"));
    c.send(&bytes).unwrap();
    c.send_method(1, 60, 70, &Enc::new().u16(0).shortstr(&q).u8(1).done());
    c.expect_method(1, 60, 71);
    let h = c.read_non_heartbeat();
    assert_eq!(h.typ, raw::FRAME_HEADER);
    // class, weight, size, flags, then the headers exactly as published.
    assert_eq!(&h.payload[12..14], &(1u16 << 13).to_be_bytes());
    assert_eq!(&h.payload[14..], &headers[..]);
    c.close();
}

/// A short string of any bytes (`Enc::shortstr` takes text).
fn sstr(b: &[u8]) -> Vec<u8> {
    let mut v = vec![b.len() as u8];
    v.extend_from_slice(b);
    v
}

/// A method's own short strings (names, consumer tags, routing keys of bindings, reply
/// texts) must be UTF-8: RabbitMQ 3.10 closes the connection with 501 "Malformed UTF-8
/// in shortstr" (its framing asserts it), naming no method. basic.publish's are not
/// checked, and neither are field names inside tables: those are taken.
#[test]
fn short_strings_that_are_not_utf8_close_501_but_table_names_and_publish_keys_pass() {
    let mut broker = Broker::start();
    let q = unique("utf8");
    let refused: Vec<(&str, u16, u16, Vec<u8>)> = vec![
        (
            "queue.declare name",
            50,
            10,
            [&[0, 0][..], &sstr(b"q\xff"), &[0, 0, 0, 0, 0]].concat(),
        ),
        (
            "exchange.declare type",
            40,
            10,
            [
                &[0, 0][..],
                &sstr(q.as_bytes()),
                &sstr(b"\xff"),
                &[0, 0, 0, 0, 0],
            ]
            .concat(),
        ),
        (
            "queue.bind routing key",
            50,
            20,
            [
                &[0, 0][..],
                &sstr(q.as_bytes()),
                &sstr(b"amq.direct"),
                &sstr(b"k\xc3"),
                &[0, 0, 0, 0, 0],
            ]
            .concat(),
        ),
        (
            "basic.consume tag",
            60,
            20,
            [
                &[0, 0][..],
                &sstr(q.as_bytes()),
                &sstr(b"t\xff"),
                &[0, 0, 0, 0, 0],
            ]
            .concat(),
        ),
        (
            "basic.get queue",
            60,
            70,
            [&[0, 0][..], &sstr(b"\x80"), &[0]].concat(),
        ),
        (
            "channel.close text",
            20,
            40,
            [&[0, 200][..], &sstr(b"bye\xff"), &[0, 0, 0, 0]].concat(),
        ),
    ];
    for (what, class, method, args) in refused {
        let mut c = open_ch1(&broker);
        c.send_method(1, 50, 10, &queue_declare_args(&q));
        c.expect_method(1, 50, 11);
        c.send_method(1, class, method, &args);
        let close = c.expect_connection_close();
        assert_eq!(
            (
                close.code,
                close.text.as_str(),
                close.class_id,
                close.method_id
            ),
            (501, "FRAME_ERROR - Malformed UTF-8 in shortstr", 0, 0),
            "{what}"
        );
    }
    still_alive(&mut broker);

    let mut c = open_ch1(&broker);
    // An argument whose name is not UTF-8, at the top and nested: declared.
    let nested = [&[2, b'n', 0xfe, b'V'][..]].concat();
    let mut table = vec![2, b'k', 0xff, b'V', 1, b't', b'F'];
    table.extend_from_slice(&(nested.len() as u32).to_be_bytes());
    table.extend_from_slice(&nested);
    let mut args = [&[0, 0][..], &sstr(q.as_bytes()), &[0]].concat();
    args.extend_from_slice(&(table.len() as u32).to_be_bytes());
    args.extend_from_slice(&table);
    c.send_method(1, 50, 10, &args);
    c.expect_method(1, 50, 11);
    // A publish whose routing key is not UTF-8 is taken (it routes nowhere here), and the
    // channel still works.
    let mut bytes = raw::method_frame(1, 60, 40, &[&[0, 0, 0][..], &sstr(b"k\xff"), &[0]].concat());
    bytes.extend(raw::content_header_frame(1, 1));
    bytes.extend(raw::body_frame(1, b"x"));
    c.send(&bytes).unwrap();
    c.send_method(1, 60, 70, &Enc::new().u16(0).shortstr(&q).u8(1).done());
    c.expect_method(1, 60, 72);
    c.send_method(1, 50, 40, &Enc::new().u16(0).shortstr(&q).u8(0).done());
    c.expect_method(1, 50, 41);
    c.close();
}

/// The broker's connection.close, read without answering it.
fn read_close_unanswered(c: &mut RawConn) -> Close {
    loop {
        let f = c.read_frame().expect("expected connection.close");
        if f.method() == Some((10, 50)) {
            return raw::parse_close(f.args());
        }
    }
}

/// Close races (RabbitMQ 3.10): a client whose connection.close crosses the broker's
/// (sent for an error the client has not seen yet) gets its close-ok, so it sees the
/// error instead of waiting out its close timeout; so does each of two closes; a close-ok
/// nobody asked for is 504.
#[test]
fn a_close_crossing_the_brokers_is_answered_and_an_unasked_close_ok_is_504() {
    let mut broker = Broker::start();
    let close_args = Enc::new().u16(200).shortstr("bye").u16(0).u16(0).done();
    for (what, bad) in [
        ("undecodable method", raw::method_frame(1, 60, 40, &[0])),
        ("unknown frame type", raw::frame(9, 0, b"abc")),
    ] {
        let mut c = open_ch1(&broker);
        let mut bytes = bad;
        bytes.extend(raw::method_frame(0, 10, 50, &close_args));
        c.send(&bytes).unwrap();
        let close = read_close_unanswered(&mut c);
        assert_eq!(close.code, 501, "{what}: {close:?}");
        c.expect_method(0, 10, 51);
    }
    // The crossing close arriving later is answered too.
    let mut c = open_ch1(&broker);
    c.send(&raw::frame(9, 0, b"abc")).unwrap();
    assert_eq!(read_close_unanswered(&mut c).code, 501);
    c.send_method(0, 10, 50, &close_args);
    c.expect_method(0, 10, 51);

    // A client that closes twice gets two close-oks.
    let mut c = open_ch1(&broker);
    let mut bytes = raw::method_frame(0, 10, 50, &close_args);
    bytes.extend(raw::method_frame(0, 10, 50, &close_args));
    c.send(&bytes).unwrap();
    c.expect_method(0, 10, 51);
    c.expect_method(0, 10, 51);

    let mut c = open_ch1(&broker);
    c.send_method(0, 10, 51, &[]);
    check_close(
        &c.expect_connection_close(),
        504,
        "CHANNEL_ERROR - unexpected method in connection state running",
        10,
        51,
    );
    still_alive(&mut broker);
}

/// A passive queue.declare takes an empty name as it is ("no queue ''"), where the
/// methods that use a queue take it for the channel's last declared one.
#[test]
fn passive_declare_of_an_empty_name_is_not_the_last_queue() {
    let broker = Broker::start();
    let mut c = open_ch1(&broker);
    let q = unique("passive-empty");
    c.send_method(1, 50, 10, &queue_declare_args(&q));
    c.expect_method(1, 50, 11);
    c.send_method(
        1,
        50,
        10,
        &Enc::new().u16(0).shortstr("").u8(1).table(&[]).done(),
    );
    let close = c.expect_channel_close(1);
    assert_eq!(
        (
            close.code,
            close.text.as_str(),
            close.class_id,
            close.method_id
        ),
        (404, "NOT_FOUND - no queue '' in vhost '/'", 50, 10)
    );
    c.open_channel(1);
    c.send_method(1, 50, 40, &Enc::new().u16(0).shortstr(&q).u8(0).done());
    c.expect_method(1, 50, 41);
    c.close();
}
