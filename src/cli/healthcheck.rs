//! `healthcheck`: GET the daemon's `/healthz` with a minimal HTTP/1.1
//! client of its own, so that a container image needs no curl.

use std::process::ExitCode;
use std::time::Duration;

use token_sweeper::config::Settings;

use super::failure::Failure;
use super::runtime;

/// Exit 0 when `url` (default: `/healthz` on `metrics.listen`) answers 200.
pub fn healthcheck(url: Option<String>, settings: &Settings) -> Result<ExitCode, Failure> {
    let url = url.unwrap_or_else(|| format!("http://{}/healthz", settings.metrics.local_address()));
    let status = runtime()?.block_on(http_get_status(&url, Duration::from_secs(3)));
    match status {
        Ok(200) => Ok(ExitCode::SUCCESS),
        Ok(code) => Err(Failure::Runtime(anyhow::anyhow!("{url}: HTTP {code}"))),
        Err(e) => Err(Failure::Runtime(anyhow::anyhow!(e))),
    }
}

/// GETs `url` (`http://host:port/path`) and returns the status code.
///
/// # Errors
/// When the URL is not plain `http://`, or the server does not answer within `timeout`.
async fn http_get_status(url: &str, timeout: Duration) -> Result<u16, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs are supported"))?;
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(host).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut head = Vec::new();
        stream.read_to_end(&mut head).await?;
        Ok::<_, std::io::Error>(head)
    };
    let head = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("{url}: no answer within {timeout:?}"))?
        .map_err(|e| format!("{url}: {e}"))?;
    // "HTTP/1.1 200 OK"
    String::from_utf8_lossy(&head)
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("{url}: not an HTTP response"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_plain_http_urls_are_asked() {
        let refused = http_get_status("https://127.0.0.1:1/healthz", Duration::from_secs(1)).await;
        assert!(refused.is_err_and(|e| e.contains("only http://")));
    }
}
