//! The file sink: appends each delivery's body (the notification, or the event, by the
//! route's mapping) as one JSON line to a file (by default `<data dir>/notifications.jsonl`).
//! Concurrent sends are written together and made durable with one `fsync` (group commit) by a
//! writer thread.

use std::{
    fs::{File, OpenOptions},
    io::Write,
    path::{Path, PathBuf},
};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::{Delivery, Sink, SinkError};

/// `type = "file"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    /// The file to append to (default: `<data dir>/notifications.jsonl`; relative paths are
    /// under the data dir).
    pub path: Option<PathBuf>,
    /// Most deliveries to this sink in flight at once.
    pub max_in_flight: usize,
}

impl Default for FileConfig {
    fn default() -> Self {
        FileConfig {
            path: None,
            max_in_flight: 1024,
        }
    }
}

impl FileConfig {
    pub fn build(&self, name: &str, data_dir: &Path) -> Result<FileSink, SinkError> {
        let path = match &self.path {
            Some(p) => data_dir.join(p),
            None => data_dir.join("notifications.jsonl"),
        };
        let mut sink = FileSink::open(&path)?;
        sink.name = name.to_string();
        Ok(sink)
    }
}

/// A line to append, and where to say when it is durable.
type Pending = (Vec<u8>, oneshot::Sender<Result<(), String>>);

pub struct FileSink {
    name: String,
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
            name: "file".into(),
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
        &self.name
    }

    fn reads_event_data(&self) -> bool {
        false
    }

    fn reads_customer_email(&self) -> bool {
        false
    }

    async fn send(&self, d: &Delivery<'_>) -> Result<(), SinkError> {
        let mut line = d.body()?;
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
