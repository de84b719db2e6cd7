//! The file sink: appends each notification as one JSON line to a file (by default
//! `<data dir>/notifications.jsonl`). Concurrent sends are written together and made durable
//! with one `fsync` (group commit) by a writer thread.

use std::{
    fs::{File, OpenOptions},
    io::Write,
    path::{Path, PathBuf},
};

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

use crate::{Notification, Sink, SinkError};

/// A line to append, and where to say when it is durable.
type Pending = (Vec<u8>, oneshot::Sender<Result<(), String>>);

pub struct FileSink {
    path: PathBuf,
    lines: mpsc::UnboundedSender<Pending>,
}

impl FileSink {
    /// Opens `path` for appending (creating it and its folder).
    pub fn open(path: &Path) -> Result<Self, SinkError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| {
                SinkError::Retriable(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| SinkError::Retriable(format!("cannot open {}: {e}", path.display())))?;
        let (lines, queue) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("file-sink".into())
            .spawn(move || writer(file, queue))
            .map_err(|e| SinkError::Retriable(e.to_string()))?;
        Ok(FileSink {
            path: path.to_path_buf(),
            lines,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn writer(mut file: File, mut queue: mpsc::UnboundedReceiver<Pending>) {
    while let Some(first) = queue.blocking_recv() {
        let mut group = vec![first];
        while let Ok(next) = queue.try_recv() {
            group.push(next);
        }
        let mut buf = Vec::new();
        for (line, _) in &group {
            buf.extend_from_slice(line);
        }
        let result = file
            .write_all(&buf)
            .and_then(|()| file.sync_data())
            .map_err(|e| e.to_string());
        for (_, reply) in group {
            let _ = reply.send(result.clone());
        }
    }
}

#[async_trait]
impl Sink for FileSink {
    fn name(&self) -> &str {
        "file"
    }

    async fn send(&self, n: &Notification) -> Result<(), SinkError> {
        let mut line = serde_json::to_vec(n).map_err(|e| SinkError::Rejected(e.to_string()))?;
        line.push(b'\n');
        let (reply, done) = oneshot::channel();
        self.lines
            .send((line, reply))
            .map_err(|_| SinkError::Retriable("file sink writer stopped".into()))?;
        done.await
            .map_err(|_| SinkError::Retriable("file sink writer stopped".into()))?
            .map_err(|e| SinkError::Retriable(format!("{}: {e}", self.path.display())))
    }

    async fn healthcheck(&self) -> Result<(), SinkError> {
        if self.lines.is_closed() {
            return Err(SinkError::Retriable("file sink writer stopped".into()));
        }
        Ok(())
    }
}
