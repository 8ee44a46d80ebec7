//! `streamhost store check DIR` and `streamhost store repair DIR`: what an operator runs when
//! the engine refuses to start on a damaged log.
//!
//! `check` only reads. `repair` takes the store's lock (no engine may run on it), copies the
//! log to a backup beside it, writes every intact record to a new log, and puts that in
//! place: the records in the damaged stretches are lost, and it says how many bytes and where.

use super::disk::{Disk, RealDisk};
use super::recovery::{self, Tail};
use super::{LOG_NAME, record};
use anyhow::Context;
use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::Path;

/// What `check` found, as text for the operator, and whether the log is damaged.
pub struct Report {
    pub text: String,
    pub damaged: bool,
}

fn read_log(dir: &Path) -> anyhow::Result<Vec<u8>> {
    let path = dir.join(LOG_NAME);
    std::fs::read(&path).with_context(|| {
        format!(
            "cannot read {} (is {} a store directory? it is the adapter's file_path)",
            path.display(),
            dir.display()
        )
    })
}

/// Reads the log in `dir` and reports what a start-up would do with it.
pub fn check(dir: &Path) -> anyhow::Result<Report> {
    let data = read_log(dir)?;
    let path = dir.join(LOG_NAME);
    let mut items = HashSet::new();
    let scan = recovery::scan(&data, |r| match r {
        record::Record::Set { s, g, i, .. } => {
            items.insert((s, g, i));
        }
        record::Record::Del { s, g, i } => {
            items.remove(&(s, g, i));
        }
        record::Record::Nop {} => {}
    });
    let mut text = format!(
        "{}: {} bytes, {} records readable from the start ({} items)\n",
        path.display(),
        data.len(),
        scan.records,
        items.len()
    );
    let damaged = match &scan.tail {
        Tail::Clean => {
            text.push_str("ok: the log is whole\n");
            false
        }
        Tail::Torn { bytes } => {
            let _ = writeln!(
                text,
                "ok: the last {bytes} bytes (from byte {}) are a torn write that was never acknowledged; the engine drops them at start",
                scan.good_len
            );
            false
        }
        Tail::Damaged(d) => {
            let _ = writeln!(
                text,
                "DAMAGED at byte {}: {}\n{} intact records follow the damage; the engine will not start on this log.\nRun `streamhost store repair {}` to back the log up and keep every intact record.",
                d.offset,
                d.reason,
                d.records_after,
                dir.display()
            );
            true
        }
    };
    Ok(Report { text, damaged })
}

/// Backs the log up, then rewrites it with every intact record; returns the report.
pub fn repair(dir: &Path) -> anyhow::Result<String> {
    let disk = RealDisk;
    let _lock = disk.lock(dir)?;
    let data = read_log(dir)?;
    let path = dir.join(LOG_NAME);
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let backup = dir.join(format!("{LOG_NAME}.damaged-{stamp}"));
    std::fs::write(&backup, &data)
        .with_context(|| format!("cannot write the backup {}", backup.display()))?;
    std::fs::File::open(&backup)?.sync_all()?;

    let mut kept = Vec::with_capacity(data.len());
    let mut records = 0u64;
    let mut unreadable = Vec::new();
    let skipped = recovery::salvage(&data, 0, |offset, payload| match record::decode(payload) {
        Ok(_) => {
            kept.extend_from_slice(&data[offset..offset + record::HEADER + payload.len()]);
            records += 1;
        }
        Err(_) => unreadable.push(offset),
    });
    let tmp = dir.join(format!("{LOG_NAME}.repair"));
    let mut out = disk.create(&tmp)?;
    out.append(&kept)?;
    out.sync()?;
    disk.rename(&tmp, &path)?;
    disk.sync_dir(dir)?;

    let lost: usize = skipped.iter().map(|(_, n)| n).sum();
    let mut text = format!(
        "backed up {} to {}\nkept {records} intact records ({} bytes)\n",
        path.display(),
        backup.display(),
        kept.len()
    );
    if skipped.is_empty() && unreadable.is_empty() {
        text.push_str("lost nothing: the log was whole\n");
    }
    for (offset, bytes) in &skipped {
        let _ = writeln!(
            text,
            "lost {bytes} bytes at byte {offset} (damaged or torn)"
        );
    }
    for offset in &unreadable {
        let _ = writeln!(
            text,
            "lost the record at byte {offset}: it passes its checksum but cannot be read"
        );
    }
    if lost > 0 || !unreadable.is_empty() {
        let _ = writeln!(
            text,
            "the backup keeps the original bytes; items written in the lost stretches have their value from before them, or are missing"
        );
    }
    Ok(text)
}
