//! The replication protocol between a follower and the leader, over one TCP connection.
//!
//! Every frame is a kind byte, a 4-byte big-endian length and that many bytes. The
//! follower opens with [`Frame::Hello`] (the files it has, each with its length and
//! checksum); the leader answers with what the follower's files lack ([`Frame::Chunk`],
//! [`Frame::SetAside`] for a file that is not a prefix of the leader's, `Op` removes),
//! then [`Frame::Synced`] and the changes that followed ([`Frame::Op`]), for as long as
//! both live. The follower acknowledges ([`Frame::Ack`]) the last change it has applied
//! and synced each time it has read everything that had arrived.

use std::io::{self, Read, Write};

use bytes::Bytes;

use crate::store::shipping::FileOp;

/// The largest frame either side accepts: a compaction's output is the big one.
const FRAME_MAX: usize = 1 << 30;

/// Version of this protocol; a node speaking another is refused with a reason.
pub const VERSION: u32 = 2;

#[derive(Debug, Clone)]
pub struct FileState {
    pub name: String,
    pub len: u64,
    pub crc: u32,
}

#[derive(Debug)]
pub enum Frame {
    /// Leader, first: a fresh nonce the follower's proof covers.
    Challenge(Bytes),
    Hello {
        version: u32,
        cluster: String,
        node: String,
        /// HMAC-SHA256 of the challenge and the node's name under `cluster.secret`.
        proof: Bytes,
        files: Vec<FileState>,
    },
    /// Leader: the connection is refused, and why.
    Refuse(String),
    /// Part of a file, during the initial sync.
    Chunk {
        file: String,
        offset: u64,
        data: Bytes,
    },
    /// The follower's file is not a prefix of the leader's: move it aside (it is sent
    /// again whole).
    SetAside(String),
    /// The initial sync is complete: the follower holds every change up to `seq`.
    Synced(u64),
    Op(u64, FileOp),
    /// Leader: nothing new (a keep-alive); the follower answers with an ack.
    Ping,
    Ack(u64),
    /// Instead of hello: a control command (`warrenctl`) given to a follower, for the
    /// leader to run. The proof covers the node's name and the request.
    Command {
        cluster: String,
        node: String,
        proof: Bytes,
        /// The control request, JSON.
        request: Bytes,
    },
    /// Leader: the command's control response, JSON.
    Answer(Bytes),
}

const HELLO: u8 = 1;
const REFUSE: u8 = 2;
const CHUNK: u8 = 3;
const SET_ASIDE: u8 = 4;
const SYNCED: u8 = 5;
const OP: u8 = 6;
const PING: u8 = 7;
const ACK: u8 = 8;
const CHALLENGE: u8 = 9;
const COMMAND: u8 = 10;
const ANSWER: u8 = 11;

const APPEND: u8 = 0;
const INSTALL: u8 = 1;
const REMOVE: u8 = 2;
const TRUNCATE: u8 = 3;

/// Append a frame to `out`.
pub fn encode(out: &mut Vec<u8>, f: &Frame) {
    let start = out.len();
    out.extend_from_slice(&[0; 5]);
    let kind = match f {
        Frame::Challenge(nonce) => {
            out.extend_from_slice(nonce);
            CHALLENGE
        }
        Frame::Hello {
            version,
            cluster,
            node,
            proof,
            files,
        } => {
            out.extend_from_slice(&version.to_be_bytes());
            put_str(out, cluster);
            put_str(out, node);
            put_str_bytes(out, proof);
            out.extend_from_slice(&(files.len() as u32).to_be_bytes());
            for f in files {
                put_str(out, &f.name);
                out.extend_from_slice(&f.len.to_be_bytes());
                out.extend_from_slice(&f.crc.to_be_bytes());
            }
            HELLO
        }
        Frame::Refuse(why) => {
            put_str(out, why);
            REFUSE
        }
        Frame::Chunk { file, offset, data } => {
            put_str(out, file);
            out.extend_from_slice(&offset.to_be_bytes());
            out.extend_from_slice(data);
            CHUNK
        }
        Frame::SetAside(file) => {
            put_str(out, file);
            SET_ASIDE
        }
        Frame::Synced(seq) => {
            out.extend_from_slice(&seq.to_be_bytes());
            SYNCED
        }
        Frame::Op(seq, op) => {
            out.extend_from_slice(&seq.to_be_bytes());
            encode_op(out, op);
            OP
        }
        Frame::Ping => PING,
        Frame::Ack(seq) => {
            out.extend_from_slice(&seq.to_be_bytes());
            ACK
        }
        Frame::Command {
            cluster,
            node,
            proof,
            request,
        } => {
            put_str(out, cluster);
            put_str(out, node);
            put_str_bytes(out, proof);
            out.extend_from_slice(request);
            COMMAND
        }
        Frame::Answer(response) => {
            out.extend_from_slice(response);
            ANSWER
        }
    };
    let len = (out.len() - start - 5) as u32;
    out[start] = kind;
    out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
}

/// Append change `seq`'s frame to `out`, all but the file data it carries, which is
/// returned to be written right after it (the data goes to the socket without a copy).
pub fn encode_op_head<'a>(out: &mut Vec<u8>, seq: u64, op: &'a FileOp) -> &'a [u8] {
    let start = out.len();
    out.extend_from_slice(&[OP, 0, 0, 0, 0]);
    out.extend_from_slice(&seq.to_be_bytes());
    let data: &[u8] = match op {
        FileOp::Append { file, offset, data } => {
            out.push(APPEND);
            put_str(out, file);
            out.extend_from_slice(&offset.to_be_bytes());
            data
        }
        FileOp::Install { file, data } => {
            out.push(INSTALL);
            put_str(out, file);
            data
        }
        other => {
            encode_op(out, other);
            &[]
        }
    };
    let len = (out.len() - start - 5 + data.len()) as u32;
    out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
    data
}

fn encode_op(out: &mut Vec<u8>, op: &FileOp) {
    match op {
        FileOp::Append { file, offset, data } => {
            out.push(APPEND);
            put_str(out, file);
            out.extend_from_slice(&offset.to_be_bytes());
            out.extend_from_slice(data);
        }
        FileOp::Install { file, data } => {
            out.push(INSTALL);
            put_str(out, file);
            out.extend_from_slice(data);
        }
        FileOp::Remove { file } => {
            out.push(REMOVE);
            put_str(out, file);
        }
        FileOp::Truncate { file, len } => {
            out.push(TRUNCATE);
            put_str(out, file);
            out.extend_from_slice(&len.to_be_bytes());
        }
    }
}

fn put_str_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u16).to_be_bytes());
    out.extend_from_slice(b);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Read one frame (blocking).
pub fn read(r: &mut impl Read) -> io::Result<Frame> {
    let mut head = [0u8; 5];
    r.read_exact(&mut head)?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > FRAME_MAX {
        return Err(bad("frame too large"));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    decode(head[0], Bytes::from(body))
}

pub fn write(w: &mut impl Write, f: &Frame) -> io::Result<()> {
    let mut out = Vec::new();
    encode(&mut out, f);
    w.write_all(&out)
}

fn bad(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("replication protocol: {what}"),
    )
}

/// A cursor over a frame's body.
struct Body {
    b: Bytes,
    at: usize,
}

impl Body {
    fn take(&mut self, n: usize) -> io::Result<Bytes> {
        if self.b.len() - self.at < n {
            return Err(bad("frame too short"));
        }
        let out = self.b.slice(self.at..self.at + n);
        self.at += n;
        Ok(out)
    }
    fn u16(&mut self) -> io::Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> io::Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> io::Result<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(&b);
        Ok(u64::from_be_bytes(a))
    }
    fn u8(&mut self) -> io::Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn string(&mut self) -> io::Result<String> {
        let n = self.u16()? as usize;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| bad("a name is not UTF-8"))
    }
    fn rest(&mut self) -> Bytes {
        let out = self.b.slice(self.at..);
        self.at = self.b.len();
        out
    }
}

fn decode(kind: u8, b: Bytes) -> io::Result<Frame> {
    let mut b = Body { b, at: 0 };
    Ok(match kind {
        CHALLENGE => Frame::Challenge(b.rest()),
        HELLO => {
            let version = b.u32()?;
            let cluster = b.string()?;
            let node = b.string()?;
            let n = b.u16()? as usize;
            let proof = b.take(n)?;
            let n = b.u32()? as usize;
            let mut files = Vec::with_capacity(n.min(1 << 16));
            for _ in 0..n {
                files.push(FileState {
                    name: b.string()?,
                    len: b.u64()?,
                    crc: b.u32()?,
                });
            }
            Frame::Hello {
                version,
                cluster,
                node,
                proof,
                files,
            }
        }
        REFUSE => Frame::Refuse(b.string()?),
        CHUNK => Frame::Chunk {
            file: b.string()?,
            offset: b.u64()?,
            data: b.rest(),
        },
        SET_ASIDE => Frame::SetAside(b.string()?),
        SYNCED => Frame::Synced(b.u64()?),
        OP => {
            let seq = b.u64()?;
            let op = match b.u8()? {
                APPEND => FileOp::Append {
                    file: b.string()?,
                    offset: b.u64()?,
                    data: b.rest(),
                },
                INSTALL => FileOp::Install {
                    file: b.string()?,
                    data: b.rest(),
                },
                REMOVE => FileOp::Remove { file: b.string()? },
                TRUNCATE => FileOp::Truncate {
                    file: b.string()?,
                    len: b.u64()?,
                },
                _ => return Err(bad("unknown change")),
            };
            Frame::Op(seq, op)
        }
        PING => Frame::Ping,
        ACK => Frame::Ack(b.u64()?),
        COMMAND => {
            let cluster = b.string()?;
            let node = b.string()?;
            let n = b.u16()? as usize;
            Frame::Command {
                cluster,
                node,
                proof: b.take(n)?,
                request: b.rest(),
            }
        }
        ANSWER => Frame::Answer(b.rest()),
        _ => return Err(bad("unknown frame")),
    })
}

/// A follower's proof that it knows the cluster's secret: HMAC-SHA256 (RFC 2104) of the
/// leader's challenge and the follower's name.
pub fn proof(secret: &str, nonce: &[u8], node: &str) -> [u8; 32] {
    let mut message = nonce.to_vec();
    message.extend_from_slice(node.as_bytes());
    hmac_sha256(secret.as_bytes(), &message)
}

/// A command's proof: [`proof`] over the node's name and the request together.
pub fn command_proof(secret: &str, nonce: &[u8], node: &str, request: &[u8]) -> [u8; 32] {
    let mut message = nonce.to_vec();
    message.extend_from_slice(node.as_bytes());
    message.push(0);
    message.extend_from_slice(request);
    hmac_sha256(secret.as_bytes(), &message)
}

/// Whether a command's `proof` is right, compared in constant time.
pub fn verify_command(
    secret: &str,
    nonce: &[u8],
    node: &str,
    request: &[u8],
    proof: &[u8],
) -> bool {
    let want = command_proof(secret, nonce, node, request);
    proof.len() == want.len() && proof.iter().zip(want).fold(0, |d, (a, b)| d | (a ^ b)) == 0
}

/// Whether `proof` is right, compared in constant time.
pub fn verify(secret: &str, nonce: &[u8], node: &str, proof: &[u8]) -> bool {
    let want = self::proof(secret, nonce, node);
    proof.len() == want.len() && proof.iter().zip(want).fold(0, |d, (a, b)| d | (a ^ b)) == 0
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.map(|k| k ^ byte);
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

/// A fresh challenge: 32 bytes from the kernel's random source.
pub fn nonce() -> io::Result<Bytes> {
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(Bytes::copy_from_slice(&b))
}

/// Whether `name` is a file replication may touch: `meta.log` or a message segment,
/// never a path that leaves the data directory.
pub fn valid_name(name: &str) -> bool {
    if name == "meta.log" {
        return true;
    }
    let Some(seg) = name.strip_prefix("messages/") else {
        return false;
    };
    seg.len() == 20 && seg.ends_with(".seg") && seg[..16].bytes().all(|c| c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let frames = [
            Frame::Hello {
                version: VERSION,
                cluster: "c".into(),
                node: "warren@a".into(),
                proof: Bytes::from_static(&[7; 32]),
                files: vec![FileState {
                    name: "meta.log".into(),
                    len: 7,
                    crc: 9,
                }],
            },
            Frame::Op(
                5,
                FileOp::Append {
                    file: "messages/0000000000000001.seg".into(),
                    offset: 10,
                    data: Bytes::from_static(b"abc"),
                },
            ),
            Frame::Ack(42),
            Frame::Command {
                cluster: "c".into(),
                node: "warren@b".into(),
                proof: Bytes::from_static(&[1; 32]),
                request: Bytes::from_static(br#"{"command":"list_queues"}"#),
            },
            Frame::Answer(Bytes::from_static(br#"{"exit_code":0}"#)),
        ];
        let mut out = Vec::new();
        for f in &frames {
            encode(&mut out, f);
        }
        let mut r = &out[..];
        let got: Vec<String> = (0..frames.len())
            .map(|_| format!("{:?}", read(&mut r).unwrap()))
            .collect();
        let want: Vec<String> = frames.iter().map(|f| format!("{f:?}")).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_change_split_from_its_data_reads_back_whole() {
        let op = FileOp::Append {
            file: "meta.log".into(),
            offset: 3,
            data: Bytes::from_static(b"hello"),
        };
        let mut out = Vec::new();
        let data = encode_op_head(&mut out, 9, &op).to_vec();
        out.extend_from_slice(&data);
        let mut whole = Vec::new();
        encode(&mut whole, &Frame::Op(9, op));
        assert_eq!(out, whole);
    }

    #[test]
    fn hmac_sha256_matches_rfc_4231() {
        // Test case 2.
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let p = proof("s3cret", b"nonce", "warren@a");
        assert!(verify("s3cret", b"nonce", "warren@a", &p));
        assert!(!verify("other", b"nonce", "warren@a", &p));
        assert!(!verify("s3cret", b"nonce", "warren@b", &p));
        assert!(!verify("s3cret", b"nonce", "warren@a", &p[..31]));
    }

    #[test]
    fn names_outside_the_data_files_are_refused() {
        assert!(valid_name("meta.log"));
        assert!(valid_name("messages/0000000000000012.seg"));
        assert!(!valid_name("messages/../../etc/passwd"));
        assert!(!valid_name("/etc/passwd"));
        assert!(!valid_name("messages/000000000000001x.seg"));
        assert!(!valid_name("meta.toml"));
    }

    #[test]
    fn a_short_or_unknown_frame_is_an_error_not_a_panic() {
        assert!(read(&mut &[OP, 0, 0, 0, 3, 1, 2, 3][..]).is_err());
        assert!(read(&mut &[99, 0, 0, 0, 0][..]).is_err());
        assert!(read(&mut &[HELLO, 0xff, 0xff, 0xff, 0xff][..]).is_err());
    }
}
