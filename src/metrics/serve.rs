//! `GET /metrics` over HTTP (axum), for the scheduler daemon to spawn.
//!
//! Each scrape reads the local records afresh; the repository's figures are reused for
//! `[metrics] repository_refresh`, and one scrape at a time reads the repository (the others wait for its result
//! rather than read it again). The format follows the scraper's `Accept` header: OpenMetrics when it asks for it
//! (Prometheus does), the Prometheus text format 0.0.4 otherwise.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::Mutex;

use super::{Error, Format, Parts, Repository, encode};
use crate::config::Config;
use crate::storage::DynStorage;

struct Shared {
    config: Arc<Config>,
    cache: Mutex<Cache>,
}

#[derive(Default)]
struct Cache {
    storage: Option<DynStorage>,
    repository: Option<(Instant, Repository)>,
}

/// Serve `GET /metrics` on `listen` until `shutdown` completes (then in-flight scrapes finish and it returns).
///
/// Errors: [`Error::Remote`] for an address other than loopback unless `[metrics] allow_remote = true`,
/// [`Error::Listen`] when the address cannot be bound, [`Error::Serve`] if the server fails.
pub async fn serve(
    listen: SocketAddr,
    config: Arc<Config>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), crate::Error> {
    if !listen.ip().is_loopback() && !config.metrics.allow_remote {
        return Err(Error::Remote { addr: listen }.into());
    }
    let listener =
        tokio::net::TcpListener::bind(listen).await.map_err(|source| Error::Listen { addr: listen, source })?;
    serve_on(listener, config, shutdown).await
}

/// [`serve`] on a listener the caller bound (a test binds port 0 and reads the port back). The loopback rule is
/// the caller's to apply.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    config: Arc<Config>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), crate::Error> {
    let addr = listener.local_addr().map_err(|source| Error::Listen { addr: ([0, 0, 0, 0], 0).into(), source })?;
    tracing::info!(address = %addr, "serving metrics at http://{addr}/metrics");
    let shared = Arc::new(Shared { config, cache: Mutex::new(Cache::default()) });
    let app = Router::new().route("/metrics", get(metrics)).with_state(shared);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|source| Error::Serve { addr, source })?;
    Ok(())
}

async fn metrics(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let wants_openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let format = if wants_openmetrics { Format::OpenMetrics } else { Format::Prometheus };
    let now = jiff::Timestamp::now();
    let local = match super::read_local(&shared.config).await {
        Ok(l) => l,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    };
    let repository = shared.repository(now).await;
    let text = encode::to_text(&encode::registry(&local, Some(&repository), now, Parts::LIVE), format);
    ([(header::CONTENT_TYPE, format.content_type())], text).into_response()
}

impl Shared {
    /// The repository's figures, read again once they are older than `repository_refresh`.
    async fn repository(&self, now: jiff::Timestamp) -> Repository {
        let mut cache = self.cache.lock().await;
        let refresh = self.config.metrics.repository_refresh.0;
        if let Some((at, r)) = &cache.repository
            && at.elapsed() < refresh
        {
            return r.clone();
        }
        if cache.storage.is_none() {
            let deadline = std::time::Duration::from_secs(self.config.archive.retry_deadline_seconds);
            let repo = &self.config.repository;
            match crate::storage::open(&repo.url, &repo.s3, deadline).await {
                Ok(s) => cache.storage = Some(s),
                Err(e) => tracing::warn!(error = %e, "metrics: cannot open the repository"),
            }
        }
        let r = super::read_repository(&self.config, cache.storage.as_deref(), now).await;
        cache.repository = Some((Instant::now(), r.clone()));
        r
    }
}
