//! The embedded Kafka-API broker of `orderflow run`: tansu, in this process, storing its log
//! in SQLite under the data dir, so topics and offsets survive a restart.

use std::{
    net::{SocketAddr, TcpListener},
    path::Path,
};

use anyhow::{bail, Context};
use tokio::task::JoinHandle;
use tracing::{error, info};
use url::Url;

/// A running embedded broker.
pub struct EmbeddedBroker {
    /// What clients should use as bootstrap servers.
    pub advertised: String,
    task: JoinHandle<()>,
}

impl EmbeddedBroker {
    /// Starts the broker on `listen` (port 0 picks a free port) with its log in
    /// `<data_dir>/broker.db`. It advertises `advertise` (`host:port`), or else the listen
    /// address with 127.0.0.1 for an unspecified IP.
    pub async fn start(
        listen: SocketAddr,
        advertise: Option<&str>,
        data_dir: &Path,
    ) -> anyhow::Result<Self> {
        let addr = if listen.port() == 0 {
            // tansu advertises the address it is given, so find the port before it binds.
            let probe = TcpListener::bind(listen).context("finding a free port for the broker")?;
            probe.local_addr()?
        } else {
            listen
        };
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        let db = std::path::absolute(data_dir.join("broker.db"))?;
        let storage = sqlite_url(&db)?;
        let listener = Url::parse(&format!("tcp://{addr}"))?;
        let advertised = match advertise {
            Some(a) => a.to_string(),
            None if addr.ip().is_unspecified() => format!("127.0.0.1:{}", addr.port()),
            None => addr.to_string(),
        };
        let advertised_url = Url::parse(&format!("tcp://{advertised}"))
            .with_context(|| format!("--kafka-advertise {advertised}: expected host:port"))?;
        let broker = tansu_broker::broker::Broker::<
            tansu_broker::coordinator::group::administrator::Controller<
                tansu_storage::StorageContainer,
            >,
            tansu_storage::StorageContainer,
        >::builder()
        .node_id(1)
        .cluster_id("orderflow")
        .incarnation_id(uuid::Uuid::now_v7())
        .advertised_listener(advertised_url)
        .storage(storage)
        .listener(listener)
        .silent(true)
        .build()
        .await
        .map_err(|e| anyhow::anyhow!("starting the embedded broker: {e:?}"))?;
        add_header_index(&db).await?;
        let mut broker = broker;
        let task = tokio::spawn(async move {
            if let Err(e) = broker.serve(tokio::time::Instant::now()).await {
                error!(error = ?e, "Embedded broker stopped.");
            }
        });
        // Wait until it accepts connections.
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                info!(%addr, db = %db.display(), "Embedded broker started.");
                return Ok(EmbeddedBroker { advertised, task });
            }
            if task.is_finished() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        task.abort();
        bail!("the embedded broker did not start listening on {addr}")
    }

    /// Serves until `shutdown` is cancelled, then stops; an error if the broker stopped on
    /// its own before.
    pub async fn serve_until(
        mut self,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> anyhow::Result<()> {
        tokio::select! {
            _ = shutdown.cancelled() => {
                self.stop().await;
                Ok(())
            }
            _ = &mut self.task => bail!("the broker stopped unexpectedly"),
        }
    }

    /// Stops the broker. Its SQLite log is durable after every write, so nothing is lost.
    pub async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// tansu 0.6 reads a record's headers with a query on `header (topition, offset_id)`, a table
/// it gives no index: every fetched record scans every header ever written, so fetches slow
/// down as the log grows. The index makes that lookup a B-tree seek. Creating it is idempotent
/// and changes no data.
async fn add_header_index(db: &Path) -> anyhow::Result<()> {
    let database = libsql::Builder::new_local(db)
        .build()
        .await
        .context("opening the broker's log to index it")?;
    let connection = database.connect()?;
    connection
        .execute(
            "create index if not exists orderflow_header_record on header (topition, offset_id)",
            (),
        )
        .await
        .context("indexing the broker's record headers")?;
    Ok(())
}

/// tansu joins the URL's host and path onto the working directory; a path that still starts
/// with `/` after its first `/` is stripped replaces the directory instead, so an absolute
/// path is written as `sqlite:////abs/path`.
fn sqlite_url(db: &Path) -> anyhow::Result<Url> {
    let text = db.to_str().context("the data dir path is not UTF-8")?;
    let url = Url::parse(&format!("sqlite:///{text}"))?;
    if url.path() != format!("/{text}") {
        bail!("cannot express {text} as a tansu storage URL (got {url})");
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_paths_survive_tansus_path_join() {
        let url = sqlite_url(Path::new("/tmp/orderflow/broker.db")).unwrap();
        assert_eq!(url.domain(), None);
        // What tansu does with it: join host and path (less one '/') onto the cwd.
        let mut path = std::path::PathBuf::from("/somewhere/else");
        path.push(url.path().strip_prefix('/').unwrap());
        assert_eq!(path, Path::new("/tmp/orderflow/broker.db"));
    }

    #[test]
    fn paths_that_need_escaping_are_refused_clearly() {
        let err = sqlite_url(Path::new("/tmp/x y/broker.db")).unwrap_err();
        assert!(err.to_string().contains("/tmp/x y/broker.db"), "{err}");
    }
}
