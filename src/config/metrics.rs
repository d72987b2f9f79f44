//! `[metrics]`: where the HTTP endpoints (`/metrics`, `/healthz`,
//! `/readyz`) listen, as an address parsed when the settings are read.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};

/// The HTTP endpoints: `/metrics`, `/healthz`, `/readyz`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSettings {
    /// `address:port` to listen on (an IP address: a host name is refused,
    /// so the listener does not depend on name resolution). Loopback by
    /// default; the container image sets `0.0.0.0:9898`.
    #[serde(with = "listen_address")]
    pub listen: SocketAddr,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 9898)),
        }
    }
}

impl MetricsSettings {
    /// Where a client on this host reaches the endpoints: `listen`, with
    /// `0.0.0.0` (every IPv4 address, not one to connect to) asked as
    /// `127.0.0.1`.
    pub fn local_address(&self) -> SocketAddr {
        match self.listen.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => {
                SocketAddr::from((Ipv4Addr::LOCALHOST, self.listen.port()))
            }
            _ => self.listen,
        }
    }
}

/// `metrics.listen` as text: `address:port`.
mod listen_address {
    use std::net::SocketAddr;

    use serde::{Deserializer, Serializer};

    use super::super::values::from_text;

    pub fn serialize<S: Serializer>(address: &SocketAddr, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(address)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
        from_text(d, |text| {
            text.parse()
                .map_err(|e| format!("{text:?} is not an address:port: {e}"))
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn listen(text: &str) -> Result<SocketAddr, String> {
        let value = serde_json::json!({ "listen": text });
        serde_json::from_value::<MetricsSettings>(value)
            .map(|settings| settings.listen)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn listen_takes_an_ip_address_and_a_port() {
        assert_eq!(listen("0.0.0.0:9898"), Ok("0.0.0.0:9898".parse().unwrap()));
        assert_eq!(listen("[::1]:80"), Ok("[::1]:80".parse().unwrap()));
        for bad in ["localhost", "localhost:9090", "127.0.0.1", ":9898"] {
            let err = listen(bad).unwrap_err();
            assert!(
                err.starts_with(&format!("{bad:?} is not an address:port: ")),
                "{err}"
            );
        }
    }

    #[test]
    fn listen_prints_as_written() {
        let settings = MetricsSettings::default();
        assert_eq!(
            toml::to_string(&settings).unwrap(),
            "listen = \"127.0.0.1:9898\"\n"
        );
    }

    #[test]
    fn every_address_is_asked_on_loopback() {
        let on = |text: &str| MetricsSettings {
            listen: text.parse().unwrap(),
        };
        assert_eq!(
            on("0.0.0.0:9898").local_address(),
            "127.0.0.1:9898".parse().unwrap()
        );
        assert_eq!(
            on("10.0.0.1:80").local_address(),
            "10.0.0.1:80".parse().unwrap()
        );
        assert_eq!(on("[::]:80").local_address(), "[::]:80".parse().unwrap());
    }
}
