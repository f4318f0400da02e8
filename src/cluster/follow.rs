//! A follower: one thread that connects to the leader, brings the data directory's files
//! level with the leader's, then applies every change the leader ships, syncing and
//! acknowledging after each burst. It never interprets the files: taking over is a
//! restart on them.
//!
//! While the files are being brought level they may be neither the old state nor the new
//! one, so a marker file (`cluster-sync.pending`) stands in the directory until the
//! leader says they are; a node with the marker never campaigns to lead.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::wire::{self, FileState, Frame};
use super::Me;
use crate::store::shipping::FileOp;

/// Present while the files are being brought level with a leader's.
pub const SYNC_MARKER: &str = "cluster-sync.pending";

/// Silence from the leader (it pings every [`super::ship::PING`]) after which the
/// connection counts as lost.
const SILENCE: Duration = Duration::from_secs(3);

/// What the control loop sees of a follower thread.
#[derive(Default)]
pub struct Progress {
    pub stop: AtomicBool,
    /// Connected and level with the leader.
    pub synced: AtomicBool,
    /// The last change applied and synced.
    pub applied: AtomicU64,
    /// A connection got level since the control loop last looked (for quieter logs).
    pub synced_once: AtomicBool,
}

/// Why a connection to the leader ended.
#[derive(Debug)]
pub enum Ended {
    Stopped,
    Refused(String),
    Lost(io::Error),
}

/// Follow the leader at `address` until told to stop or the connection ends.
pub fn follow(dir: &Path, me: &Me, address: &str, progress: &Arc<Progress>) -> Ended {
    progress.synced.store(false, Ordering::Release);
    let result = connect(address).and_then(|s| {
        let mut f = Files::new(dir);
        session(&mut f, s, me, progress)
    });
    progress.synced.store(false, Ordering::Release);
    match result {
        Ok(ended) => ended,
        Err(e) => Ended::Lost(e),
    }
}

pub(super) fn connect(address: &str) -> io::Result<TcpStream> {
    let addrs: Vec<SocketAddr> = address.to_socket_addrs()?.collect();
    let mut last = io::Error::other(format!("{address} resolves to no address"));
    for a in addrs {
        match TcpStream::connect_timeout(&a, Duration::from_secs(2)) {
            Ok(s) => {
                s.set_nodelay(true)?;
                // The leader pings every 300 ms: silence this long is a lost leader (and
                // a read cut short by a timeout would tear the framing, so it ends).
                s.set_read_timeout(Some(SILENCE))?;
                s.set_write_timeout(Some(SILENCE))?;
                return Ok(s);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn session(
    files: &mut Files,
    stream: TcpStream,
    me: &Me,
    progress: &Progress,
) -> io::Result<Ended> {
    let mut out = BufWriter::new(stream.try_clone()?);
    let mut input = BufReader::with_capacity(1 << 20, stream);
    let nonce = match wire::read(&mut input)? {
        Frame::Challenge(nonce) => nonce,
        Frame::Refuse(why) => return Ok(Ended::Refused(why)),
        _ => {
            return Err(io::Error::other(
                "the leader did not start with a challenge",
            ))
        }
    };
    wire::write(
        &mut out,
        &Frame::Hello {
            version: wire::VERSION,
            cluster: me.cluster.clone(),
            node: me.node.clone(),
            proof: Bytes::copy_from_slice(&wire::proof(&me.secret, &nonce, &me.node)),
            files: files.list()?,
        },
    )?;
    out.flush()?;
    files.mark_syncing()?;
    let mut acked = 0;
    let mut unsynced = 0;
    loop {
        if progress.stop.load(Ordering::Acquire) {
            return Ok(Ended::Stopped);
        }
        let frame = wire::read(&mut input)?;
        let mut ping = false;
        match frame {
            Frame::Refuse(why) => return Ok(Ended::Refused(why)),
            Frame::SetAside(name) => files.set_aside(&name)?,
            Frame::Chunk { file, offset, data } => {
                received(data.len());
                files.write_at(&file, offset, &data)?;
                // Synced as it comes: one sync of a whole directory at the end would
                // stall reading for seconds, and the leader drops a follower that does
                // not read (a 1 GB join reconnected once for that).
                unsynced += data.len();
                if unsynced >= SYNC_EVERY {
                    files.sync()?;
                    unsynced = 0;
                }
            }
            Frame::Synced(seq) => {
                files.sync()?;
                files.unmark_syncing()?;
                progress.applied.store(seq, Ordering::Release);
                progress.synced.store(true, Ordering::Release);
                progress.synced_once.store(true, Ordering::Release);
                // The leader learns the follower is level from this first ack.
                ping = true;
            }
            Frame::Op(seq, op) => {
                if let FileOp::Append { data, .. } | FileOp::Install { data, .. } = &op {
                    received(data.len());
                }
                files.apply(&op)?;
                if seq > 0 {
                    progress.applied.store(seq, Ordering::Release);
                }
            }
            Frame::Ping => ping = true,
            Frame::Hello { .. }
            | Frame::Ack(_)
            | Frame::Challenge(_)
            | Frame::Command { .. }
            | Frame::Answer(_) => {
                return Err(io::Error::other("the leader sent an unexpected frame"))
            }
        }
        // Everything that had arrived is applied: make it durable, then say so.
        if input.buffer().is_empty() && progress.synced.load(Ordering::Acquire) {
            let applied = progress.applied.load(Ordering::Acquire);
            if applied > acked || ping {
                files.sync()?;
                wire::write(&mut out, &Frame::Ack(applied))?;
                out.flush()?;
                acked = applied;
            }
        }
    }
}

/// The replicated files of a data directory, as the follower writes them.
struct Files {
    dir: PathBuf,
    open: HashMap<String, File>,
    /// Written since the last sync.
    dirty: Vec<String>,
    /// Files were created, renamed or removed since the last sync.
    dir_dirty: bool,
}

impl Files {
    fn new(dir: &Path) -> Files {
        Files {
            dir: dir.to_path_buf(),
            open: HashMap::new(),
            dirty: Vec::new(),
            dir_dirty: false,
        }
    }

    fn path(&self, name: &str) -> io::Result<PathBuf> {
        if !wire::valid_name(name) {
            return Err(io::Error::other(format!(
                "the leader named a file replication does not write: {name:?}"
            )));
        }
        Ok(self.dir.join(name))
    }

    /// The replicated files here, with their lengths and checksums.
    fn list(&self) -> io::Result<Vec<FileState>> {
        let mut out = Vec::new();
        for name in names(&self.dir)? {
            let data = match fs::read(self.dir.join(&name)) {
                Ok(d) => d,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            out.push(FileState {
                len: data.len() as u64,
                crc: crc32fast::hash(&data),
                name,
            });
        }
        Ok(out)
    }

    fn file(&mut self, name: &str) -> io::Result<&File> {
        if !self.open.contains_key(name) {
            let path = self.path(name)?;
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent)?;
            }
            let existed = path.exists();
            let f = crate::store::files::options()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)?;
            self.dir_dirty |= !existed;
            self.open.insert(name.to_owned(), f);
        }
        self.open
            .get(name)
            .ok_or_else(|| io::Error::other("file vanished"))
    }

    fn write_at(&mut self, name: &str, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file(name)?.write_all_at(data, offset)?;
        if !self.dirty.iter().any(|d| d == name) {
            self.dirty.push(name.to_owned());
        }
        Ok(())
    }

    fn apply(&mut self, op: &FileOp) -> io::Result<()> {
        match op {
            FileOp::Append { file, offset, data } => self.write_at(file, *offset, data),
            FileOp::Install { file, data } => {
                let path = self.path(file)?;
                self.open.remove(file.as_str());
                let tmp = path.with_extension("replica");
                crate::store::files::write_synced(&tmp, data)?;
                fs::rename(&tmp, &path)?;
                self.dir_dirty = true;
                Ok(())
            }
            FileOp::Remove { file } => {
                let path = self.path(file)?;
                self.open.remove(file.as_str());
                self.dirty.retain(|d| d != file);
                match fs::remove_file(&path) {
                    Ok(()) => self.dir_dirty = true,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
                Ok(())
            }
            FileOp::Truncate { file, len } => {
                self.file(file)?.set_len(*len)?;
                if !self.dirty.iter().any(|d| d == file) {
                    self.dirty.push(file.clone());
                }
                Ok(())
            }
        }
    }

    /// Move a file that is not a prefix of the leader's aside (never delete what the
    /// node cannot account for: it may hold changes an old leader never confirmed).
    fn set_aside(&mut self, name: &str) -> io::Result<()> {
        let path = self.path(name)?;
        self.open.remove(name);
        self.dirty.retain(|d| d != name);
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let aside = self.dir.join("diverged").join(stamp.to_string());
        fs::create_dir_all(&aside)?;
        let to = aside.join(name.replace('/', "_"));
        match fs::rename(&path, &to) {
            Ok(()) => {
                tracing::warn!(file = name, to = %to.display(), "a file that differs from the leader's was set aside");
                self.dir_dirty = true;
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Make every write so far durable.
    fn sync(&mut self) -> io::Result<()> {
        for name in std::mem::take(&mut self.dirty) {
            if let Some(f) = self.open.get(&name) {
                f.sync_data()?;
            }
        }
        if std::mem::take(&mut self.dir_dirty) {
            for d in [self.dir.clone(), self.dir.join("messages")] {
                if let Ok(f) = File::open(&d) {
                    f.sync_all()?;
                }
            }
        }
        Ok(())
    }

    fn mark_syncing(&mut self) -> io::Result<()> {
        crate::store::files::write_synced(&self.dir.join(SYNC_MARKER), b"")?;
        self.dir_dirty = true;
        self.sync()
    }

    fn unmark_syncing(&mut self) -> io::Result<()> {
        match fs::remove_file(self.dir.join(SYNC_MARKER)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        self.dir_dirty = true;
        self.sync()
    }
}

/// The names of the replicated files in `dir` (`meta.log`, `messages/*.seg`).
pub fn names(dir: &Path) -> io::Result<Vec<String>> {
    let mut out = Vec::new();
    if dir.join("meta.log").exists() {
        out.push("meta.log".to_owned());
    }
    match fs::read_dir(dir.join("messages")) {
        Ok(entries) => {
            for e in entries {
                let name = format!("messages/{}", e?.file_name().to_string_lossy());
                if wire::valid_name(&name) {
                    out.push(name);
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    out.sort();
    Ok(out)
}

/// Whether the files here may be trusted to lead (no sync was left half done).
pub fn complete(dir: &Path) -> bool {
    !dir.join(SYNC_MARKER).exists()
}

fn received(n: usize) {
    super::stats::BYTES_RECEIVED.fetch_add(n as u64, Ordering::Relaxed);
}

/// During a sync, the bytes written between syncs.
const SYNC_EVERY: usize = 32 << 20;

/// Mark `dir` as not level with any leader (durably), as a sync does while it runs:
/// the node will not campaign until a sync completes.
pub fn mark_unsynced(dir: &Path) -> io::Result<()> {
    crate::store::files::write_synced(&dir.join(SYNC_MARKER), b"")?;
    File::open(dir)?.sync_all()
}

/// Read a whole file (the leader's side of a sync), or `None` if it is gone.
pub fn read_file(path: &Path) -> io::Result<Option<File>> {
    match File::open(path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The checksum of a file's first `len` bytes, if it has that many.
pub fn prefix_crc(f: &mut File, len: u64) -> io::Result<Option<u32>> {
    let mut h = crc32fast::Hasher::new();
    let mut left = len;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let want = (left as usize).min(buf.len());
        let n = f.read(&mut buf[..want])?;
        if n == 0 {
            return Ok(None);
        }
        h.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(Some(h.finalize()))
}
