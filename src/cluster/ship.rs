//! The leader's side of replication: the listener followers connect to, and per
//! follower a thread that brings its files level with the leader's and then ships every
//! change (from [`Shipping`]), and one that reads its acknowledgements.
//!
//! Bringing the files level needs no pause: the sequence number is taken first, the files
//! are read after, and every change from that number on is shipped too. A change the
//! files already show is shipped once more, and writes the same bytes at the same place.

use std::collections::{HashMap, HashSet};
use std::io::{self, BufReader, BufWriter, IoSlice, Read, Seek, SeekFrom, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::follow::{names, prefix_crc, read_file};
use super::wire::{self, FileState, Frame};
use super::Me;
use crate::store::shipping::{FileOp, Shipping};

/// How often the leader shows it is alive when there is nothing to ship.
pub const PING: Duration = Duration::from_millis(300);

/// Silence from a follower after which its connection is closed.
const SILENCE: Duration = Duration::from_secs(3);

/// What the leader knows of a follower.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The connection this is about: a reconnect replaces an older one's reports.
    generation: u64,
    pub connected: bool,
    /// Level with the leader (it acknowledged the end of its sync).
    pub synced: bool,
    /// The last change it holds.
    pub acked: u64,
    /// The changes it still needs start after this.
    pub needs: u64,
    /// When `acked` last moved (or it was level).
    pub progress_at: Instant,
}

/// The followers, as the connection threads report them.
#[derive(Default)]
pub struct Followers {
    peers: Mutex<HashMap<String, Peer>>,
    generations: std::sync::atomic::AtomicU64,
}

impl Followers {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Peer>> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn snapshot(&self) -> HashMap<String, Peer> {
        self.lock().clone()
    }

    fn connect(&self, node: &str, needs: u64) -> u64 {
        let generation = 1 + self
            .generations
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let mut peers = self.lock();
        let progress_at = peers.get(node).map_or_else(Instant::now, |p| p.progress_at);
        peers.insert(
            node.to_owned(),
            Peer {
                generation,
                connected: true,
                synced: false,
                acked: 0,
                needs,
                progress_at,
            },
        );
        generation
    }

    fn update(&self, node: &str, generation: u64, f: impl FnOnce(&mut Peer)) -> bool {
        match self.lock().get_mut(node) {
            Some(p) if p.generation == generation => {
                f(p);
                true
            }
            _ => false,
        }
    }

    /// The lowest change any connected follower still needs (everything before can go).
    pub fn needed(&self, last: u64) -> u64 {
        self.lock()
            .values()
            .filter(|p| p.connected)
            .map(|p| p.needs)
            .min()
            .unwrap_or(last)
    }
}

/// Accept followers on `listener` for as long as the process leads.
pub fn serve(
    listener: TcpListener,
    dir: PathBuf,
    me: Me,
    shipping: Arc<Shipping>,
    followers: Arc<Followers>,
    answer: Answer,
) {
    let spawn = move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let (dir, me) = (dir.clone(), me.clone());
            let (shipping, followers) = (shipping.clone(), followers.clone());
            let answer = answer.clone();
            let _ = std::thread::Builder::new()
                .name("warren-ship".into())
                .spawn(move || {
                    let peer = stream
                        .peer_addr()
                        .map(|a| a.to_string())
                        .unwrap_or_default();
                    if let Err(e) = follower(stream, &dir, &me, &shipping, &followers, &answer) {
                        tracing::info!(peer, error = %e, "replication connection ended");
                    }
                });
        }
    };
    if let Err(e) = std::thread::Builder::new()
        .name("warren-replication".into())
        .spawn(spawn)
    {
        tracing::error!(error = %e, "cannot start the replication listener's thread");
    }
}

/// Runs a control request on the leader's broker (JSON in, JSON out).
pub type Answer = Arc<dyn Fn(Bytes) -> Vec<u8> + Send + Sync>;

/// The leader's side of [`super::ops::ask`]: check who asks, run the command, answer.
fn answer_command(
    out: &mut impl Write,
    me: &Me,
    nonce: &[u8],
    frame: Frame,
    answer: &Answer,
) -> io::Result<()> {
    let Frame::Command {
        cluster,
        node,
        proof,
        request,
    } = frame
    else {
        return Err(io::Error::other("not a command"));
    };
    let refusal = if cluster != me.cluster {
        Some(format!(
            "this leader is of cluster {:?}; {node} is of {cluster:?}",
            me.cluster
        ))
    } else if !me.secret.is_empty()
        && !wire::verify_command(&me.secret, nonce, &node, &request, &proof)
    {
        Some(format!(
            "{node} does not know cluster {cluster:?}'s secret (cluster.secret)"
        ))
    } else {
        None
    };
    if let Some(why) = refusal {
        tracing::warn!(node, why, "control command refused");
        wire::write(out, &Frame::Refuse(why))?;
        return out.flush();
    }
    let response = answer(request);
    wire::write(out, &Frame::Answer(Bytes::from(response)))?;
    out.flush()
}

fn follower(
    stream: TcpStream,
    dir: &Path,
    me: &Me,
    shipping: &Arc<Shipping>,
    followers: &Arc<Followers>,
    answer: &Answer,
) -> io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(SILENCE))?;
    let mut input = BufReader::new(stream.try_clone()?);
    let mut out = BufWriter::with_capacity(1 << 20, stream.try_clone()?);
    let nonce = wire::nonce()?;
    wire::write(&mut out, &Frame::Challenge(nonce.clone()))?;
    out.flush()?;
    let first = wire::read(&mut input)?;
    if let Frame::Command { .. } = first {
        return answer_command(&mut out, me, &nonce, first, answer);
    }
    let Frame::Hello {
        version,
        cluster: theirs,
        node,
        proof,
        files,
    } = first
    else {
        return Err(io::Error::other("a follower did not start with hello"));
    };
    let cluster = &me.cluster;
    let refusal = if version != wire::VERSION || theirs != *cluster {
        Some(format!(
            "this leader is of cluster {cluster:?} with replication protocol {}; the follower is of {theirs:?} with {version}",
            wire::VERSION
        ))
    } else if !me.secret.is_empty() && !wire::verify(&me.secret, &nonce, &node, &proof) {
        Some(format!(
            "{node} does not know cluster {cluster:?}'s secret (cluster.secret)"
        ))
    } else {
        None
    };
    if let Some(why) = refusal {
        wire::write(&mut out, &Frame::Refuse(why.clone()))?;
        out.flush()?;
        return Err(io::Error::other(why));
    }
    // Its host's fronts pass clients on to this leader, naming them in PROXY lines.
    if let Ok(a) = stream.peer_addr() {
        crate::proxy::trust(a.ip());
    }
    // Taken before the files are read: see the module's comment.
    let start = shipping.last() + 1;
    let generation = followers.connect(&node, start - 1);
    tracing::info!(
        node,
        files = files.len(),
        "follower connected; bringing its files level"
    );
    let acks = {
        let (stream, node, shipping, followers) = (
            stream.try_clone()?,
            node.clone(),
            shipping.clone(),
            followers.clone(),
        );
        std::thread::Builder::new()
            .name("warren-acks".into())
            .spawn(move || read_acks(stream, &node, generation, &shipping, &followers))?
    };
    let result = level(&mut out, dir, &files).and_then(|sent| {
        wire::write(&mut out, &Frame::Synced(start - 1))?;
        out.flush()?;
        tracing::info!(
            node,
            bytes = sent,
            "follower's files sent; streaming changes"
        );
        stream_changes(&mut out, start - 1, shipping, || {
            followers.update(&node, generation, |_| {})
        })
    });
    followers.update(&node, generation, |p| p.connected = false);
    let _ = stream.shutdown(Shutdown::Both);
    let _ = acks.join();
    result
}

/// Send the follower what its files lack; the bytes sent.
fn level(out: &mut impl Write, dir: &Path, theirs: &[FileState]) -> io::Result<u64> {
    let theirs: HashMap<&str, &FileState> = theirs.iter().map(|f| (f.name.as_str(), f)).collect();
    let ours = names(dir)?;
    let newest = ours.iter().filter_map(|n| segment_number(n)).max();
    let mut sent = 0;
    for name in &ours {
        let Some(mut file) = read_file(&dir.join(name))? else {
            continue; // removed meanwhile: a change shipped later says so
        };
        let len = file.metadata()?.len();
        let from = match theirs.get(name.as_str()) {
            Some(t) if t.len <= len && prefix_crc(&mut file, t.len)? == Some(t.crc) => t.len,
            Some(_) => {
                wire::write(out, &Frame::SetAside(name.clone()))?;
                0
            }
            None => 0,
        };
        sent += send_range(out, &mut file, name, from, len)?;
    }
    let ours: HashSet<&str> = ours.iter().map(String::as_str).collect();
    for name in theirs.keys().filter(|n| !ours.contains(*n)) {
        // A segment newer than any here was written by an old leader after this one's
        // copy stopped: it may hold what no one confirmed. Older ones were compacted
        // away here.
        let frame = match (segment_number(name), newest) {
            (Some(n), Some(newest)) if n > newest => Frame::SetAside(name.to_string()),
            _ => Frame::Op(
                0,
                FileOp::Remove {
                    file: name.to_string(),
                },
            ),
        };
        wire::write(out, &frame)?;
    }
    Ok(sent)
}

fn segment_number(name: &str) -> Option<u64> {
    name.strip_prefix("messages/")?
        .strip_suffix(".seg")?
        .parse()
        .ok()
}

fn send_range(
    out: &mut impl Write,
    file: &mut std::fs::File,
    name: &str,
    from: u64,
    to: u64,
) -> io::Result<u64> {
    file.seek(SeekFrom::Start(from))?;
    let mut at = from;
    let mut buf = vec![0u8; 1 << 20];
    while at < to {
        let want = ((to - at) as usize).min(buf.len());
        let n = file.read(&mut buf[..want])?;
        if n == 0 {
            break;
        }
        wire::write(
            out,
            &Frame::Chunk {
                file: name.to_owned(),
                offset: at,
                data: Bytes::copy_from_slice(&buf[..n]),
            },
        )?;
        super::stats::BYTES_SHIPPED.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        at += n as u64;
    }
    Ok(at - from)
}

/// Ship every change after `after`, for as long as `current` says this connection is
/// the follower's. The frames' heads are gathered in one buffer and the file data is
/// written from the shared bytes it already is, in one vectored write per round.
fn stream_changes(
    out: &mut BufWriter<TcpStream>,
    mut after: u64,
    shipping: &Shipping,
    current: impl Fn() -> bool,
) -> io::Result<()> {
    out.flush()?;
    let socket = out.get_mut();
    let mut heads = Vec::with_capacity(64 << 10);
    while current() && !shipping.is_fenced() {
        let ops = shipping
            .take(after, 8 << 20, PING)
            .map_err(|_| io::Error::other("the follower fell too far behind; it syncs again"))?;
        heads.clear();
        if ops.is_empty() {
            wire::encode(&mut heads, &Frame::Ping);
            socket.write_all(&heads)?;
            continue;
        }
        // Where each frame's head ends in `heads`, and the data that follows it.
        let mut parts: Vec<(usize, &[u8])> = Vec::with_capacity(ops.len());
        for (seq, op) in &ops {
            let data = wire::encode_op_head(&mut heads, *seq, op);
            parts.push((heads.len(), data));
            after = *seq;
        }
        let mut slices = Vec::with_capacity(parts.len() * 2);
        let mut from = 0;
        for (end, data) in parts {
            slices.push(IoSlice::new(&heads[from..end]));
            if !data.is_empty() {
                slices.push(IoSlice::new(data));
            }
            from = end;
        }
        let bytes: usize = slices.iter().map(|s| s.len()).sum();
        write_all_vectored(socket, &mut slices)?;
        super::stats::BYTES_SHIPPED.fetch_add(bytes as u64, std::sync::atomic::Ordering::Relaxed);
    }
    Ok(())
}

fn write_all_vectored(w: &mut impl Write, mut slices: &mut [IoSlice<'_>]) -> io::Result<()> {
    while !slices.is_empty() {
        match w.write_vectored(slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn read_acks(
    stream: TcpStream,
    node: &str,
    generation: u64,
    shipping: &Shipping,
    followers: &Followers,
) {
    // Nothing comes during the initial sync, however long it takes (a follower that
    // stops reading is found by the writes' timeout). From its first ack on, a follower
    // acks at least after every ping, and a silence ends the connection (a read cut
    // short by a timeout would leave the framing torn). Once a 3 s read timeout here
    // cut every sync longer than that, and a 1 GB join needed a second connection.
    let _ = stream.set_read_timeout(None);
    let mut input = BufReader::new(stream);
    let mut first = true;
    while let Ok(Frame::Ack(seq)) = wire::read(&mut input) {
        if std::mem::take(&mut first) {
            let _ = input.get_ref().set_read_timeout(Some(SILENCE));
        }
        let last = shipping.last();
        let current = followers.update(node, generation, |p| {
            if seq > p.acked || !p.synced || seq >= last {
                p.progress_at = Instant::now();
            }
            p.synced = true;
            p.acked = p.acked.max(seq);
            p.needs = p.needs.max(seq);
        });
        if !current {
            break;
        }
        shipping.acked(node, seq);
    }
    followers.update(node, generation, |p| p.connected = false);
    let _ = input.get_ref().shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::super::follow::{self, Ended, Progress};
    use super::*;
    use std::sync::atomic::Ordering;

    fn me(node: &str, secret: &str) -> Me {
        Me {
            node: node.into(),
            cluster: "t".into(),
            address: String::new(),
            secret: secret.into(),
        }
    }

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("warren-ship-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("messages")).unwrap();
        d
    }

    /// A leader on a loopback port serving `leader_dir`; its address.
    fn leader(leader_dir: &Path, secret: &str) -> (String, Arc<Shipping>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let shipping = Shipping::new(1);
        let followers = Arc::new(Followers::default());
        serve(
            listener,
            leader_dir.to_path_buf(),
            me("warren@leader", secret),
            shipping.clone(),
            followers,
            // Answers with the command's name: what it was asked.
            Arc::new(|request| {
                let req: crate::control::Request = serde_json::from_slice(&request).unwrap();
                serde_json::to_vec(&crate::control::Response::message(req.command)).unwrap()
            }),
        );
        (address, shipping)
    }

    /// A node of another replication protocol (another major data format) is told so,
    /// with both versions named, and is sent nothing: it stays out.
    #[test]
    fn a_follower_of_another_format_is_refused_with_both_versions_named() {
        let ld = dir("leader-version");
        std::fs::write(ld.join("meta.log"), b"definitions").unwrap();
        let (address, _) = leader(&ld, "s3cret");
        let stream = TcpStream::connect(&address).unwrap();
        let mut input = BufReader::new(stream.try_clone().unwrap());
        let mut out = BufWriter::new(stream);
        let Frame::Challenge(nonce) = wire::read(&mut input).unwrap() else {
            panic!("no challenge")
        };
        let proof = wire::proof("s3cret", &nonce, "warren@old");
        let hello = Frame::Hello {
            version: wire::VERSION + 1,
            cluster: "t".into(),
            node: "warren@old".into(),
            proof: Bytes::copy_from_slice(&proof),
            files: vec![],
        };
        wire::write(&mut out, &hello).unwrap();
        out.flush().unwrap();
        match wire::read(&mut input).unwrap() {
            Frame::Refuse(why) => {
                let ours = format!("replication protocol {}", wire::VERSION);
                let theirs = format!("with {}", wire::VERSION + 1);
                assert!(why.contains(&ours) && why.contains(&theirs), "{why}");
            }
            other => panic!("not refused: {other:?}"),
        }
    }

    /// A control command passed on by a follower is run on the leader only when the
    /// follower proves the cluster's secret over that very request.
    #[test]
    fn a_command_is_run_for_a_node_that_knows_the_secret_only() {
        let ld = dir("leader-commands");
        let (address, _) = leader(&ld, "s3cret");
        let request = br#"{"command":"list_queues"}"#;
        let answer = super::super::ops::ask(&address, &me("warren@f", "s3cret"), request)
            .expect("an answer");
        assert_eq!(answer.message.as_deref(), Some("list_queues"));
        let refused = super::super::ops::ask(&address, &me("warren@f", "guess"), request);
        let e = refused.expect_err("a wrong secret is refused");
        assert!(e.to_string().contains("secret"), "{e}");
    }

    /// A follower that does not know the cluster's secret gets nothing; one that does
    /// gets the leader's files and then its changes, over real sockets.
    #[test]
    fn only_a_follower_that_knows_the_secret_is_sent_the_files() {
        let ld = dir("leader");
        std::fs::write(ld.join("meta.log"), b"definitions").unwrap();
        let (address, shipping) = leader(&ld, "s3cret");

        let fd = dir("intruder");
        let progress = Arc::new(Progress::default());
        match follow::follow(&fd, &me("warren@x", "guess"), &address, &progress) {
            Ended::Refused(why) => assert!(why.contains("secret"), "{why}"),
            other => panic!("an intruder was not refused: {other:?}"),
        }
        assert!(!fd.join("meta.log").exists(), "the intruder got data");

        let fd = dir("follower");
        let progress = Arc::new(Progress::default());
        let thread = {
            let (fd, address, progress) = (fd.clone(), address.clone(), progress.clone());
            std::thread::spawn(move || {
                follow::follow(&fd, &me("warren@f", "s3cret"), &address, &progress)
            })
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !progress.synced.load(Ordering::Acquire) {
            assert!(std::time::Instant::now() < deadline, "no sync");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(std::fs::read(fd.join("meta.log")).unwrap(), b"definitions");
        shipping.push(FileOp::Append {
            file: "meta.log".into(),
            offset: 11,
            data: Bytes::from_static(b" and more"),
        });
        let seq = shipping.last();
        while progress.applied.load(Ordering::Acquire) < seq {
            assert!(std::time::Instant::now() < deadline, "change not applied");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            std::fs::read(fd.join("meta.log")).unwrap(),
            b"definitions and more"
        );
        progress.stop.store(true, Ordering::Release);
        assert!(matches!(thread.join().unwrap(), Ended::Stopped));
        for d in [ld, fd] {
            let _ = std::fs::remove_dir_all(d);
        }
        let _ = std::fs::remove_dir_all(dir("intruder"));
    }
}
