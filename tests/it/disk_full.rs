//! A full disk, for real: the data directory on a tmpfs of a few MiB (mounted by the test,
//! as root). Persistent publishes fill it until writes fail; the broker nacks what it
//! could not store, raises the disk alarm, keeps serving consumers, and heals on its own
//! once they have freed space. warren-only (it chooses the broker's data directory).
use crate::common::*;
use crate::durability::{declare_durable, persistent, skip_external};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A tmpfs mounted for the test's life.
struct Mount(PathBuf);

impl Mount {
    /// None (with the reason on stderr) where mounting is not allowed.
    fn tmpfs(size: &str) -> Option<Mount> {
        let dir = std::env::temp_dir().join(format!("warren-full-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok()?;
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&dir)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Mount(dir)),
            Ok(o) => {
                eprintln!(
                    "skipped: cannot mount a small tmpfs for the data directory (needs root): {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("skipped: cannot run mount: {e}");
                None
            }
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

async fn gauge(broker: &Broker, name: &str) -> f64 {
    let m = crate::metrics::scrape(broker, "/metrics").await;
    m.get(name).copied().unwrap_or(f64::NAN)
}

async fn wait_gauge(broker: &Broker, name: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = gauge(broker, name).await;
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "{name} is {got}, want {want}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn quarantined(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir.join("quarantine"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Publish one at a time with confirms until the broker nacks: (acked, nacked) numbers.
async fn fill(ch: &Channel, body: &[u8], from: u64) -> (Vec<u64>, Vec<u64>) {
    let (mut acked, mut nacked) = (Vec::new(), Vec::new());
    for n in from..from + 10_000 {
        let mut b = n.to_string().into_bytes();
        b.push(b' ');
        b.extend_from_slice(body);
        let confirm = within(ch.basic_publish(
            "".into(),
            "full".into(),
            BasicPublishOptions::default(),
            &b,
            persistent(),
        ))
        .await
        .unwrap();
        if within(confirm).await.unwrap().is_ack() {
            acked.push(n);
        } else {
            nacked.push(n);
            break;
        }
    }
    (acked, nacked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_nacks_alarms_drains_and_heals_without_a_restart() {
    if skip_external() {
        return;
    }
    let Some(mount) = Mount::tmpfs("6m") else {
        return;
    };
    let dir = mount.0.join("data");
    // The free-space alarm would block publishers before the disk fills: off, so that
    // the store meets the full disk itself (as when something else fills it).
    let args = [
        "--set",
        "store.segment_size=262144",
        "--set",
        "alarms.disk_free_limit=0",
    ];
    let broker = Broker::spawn_in(dir.clone(), &args);
    let (conn, ch) = broker.channel().await;
    declare_durable(&ch, "full", no_args()).await;
    within(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();
    let body = vec![b'f'; 16 * 1024];

    let (acked, nacked) = fill(&ch, &body, 0).await;
    assert!(acked.len() > 50, "the disk took some: {}", acked.len());
    assert_eq!(
        nacked.len(),
        1,
        "a publish the disk could not take is nacked"
    );
    wait_gauge(&broker, "warren_store_write_failing", 1.0).await;
    wait_gauge(&broker, "rabbitmq_alarms_free_disk_space_watermark", 1.0).await;

    // Consumers keep working: drain with acks on another connection; every confirmed
    // message is there (the nacked one may be too: it reached the queue in memory).
    let (_c2, consumer) = broker.channel().await;
    let mut got = Vec::new();
    while let Some(m) = get(&consumer, "full", false).await {
        let text = body_str(&m.delivery);
        got.push(text.split(' ').next().unwrap().parse::<u64>().unwrap());
        within(consumer.basic_ack(m.delivery.delivery_tag, BasicAckOptions::default()))
            .await
            .unwrap();
    }
    for n in &acked {
        assert!(got.contains(n), "confirmed message {n} was lost");
    }
    assert!(got.len() <= acked.len() + nacked.len(), "{got:?}");

    // Space came back with the consumed segments: the store heals and the alarm clears.
    wait_gauge(&broker, "warren_store_write_failing", 0.0).await;
    wait_gauge(&broker, "rabbitmq_alarms_free_disk_space_watermark", 0.0).await;
    drop(ch);
    drop(conn);
    let (_conn, ch) = broker.channel().await;
    within(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();
    let mut after = Vec::new();
    for n in 100_000..100_020u64 {
        let b = format!("{n} after");
        let confirm = within(ch.basic_publish(
            "".into(),
            "full".into(),
            BasicPublishOptions::default(),
            b.as_bytes(),
            persistent(),
        ))
        .await
        .unwrap();
        assert!(within(confirm).await.unwrap().is_ack(), "accepted again");
        after.push(n);
    }

    // A crash, and the journal reads back cleanly: exactly what was confirmed since.
    let dir = broker.crash();
    let broker = Broker::spawn_in(dir.clone(), &args);
    let (_conn, ch) = broker.channel().await;
    let mut left = Vec::new();
    while let Some(m) = get(&ch, "full", true).await {
        left.push(
            body_str(&m.delivery)
                .split(' ')
                .next()
                .unwrap()
                .parse::<u64>()
                .unwrap(),
        );
    }
    assert_eq!(left, after);
    assert!(
        quarantined(&dir).is_empty(),
        "no torn or damaged record: {:?}",
        quarantined(&dir)
    );
    drop(broker);
    drop(mount);
}
