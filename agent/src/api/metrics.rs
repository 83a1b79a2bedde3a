//! `/metrics`: the agent's state in the Prometheus text format, read from the same status
//! the API answers at each scrape (nothing is kept for it but the NBD counters, which the
//! volumes keep, and the event counts, which the event hub keeps).

use std::fmt::Write;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::{Api, ErrorBody};

struct Scrape(Api);

impl std::fmt::Debug for Scrape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scrape")
    }
}

type Labels = Vec<(&'static str, String)>;

/// One family: its name, help, type, and (labels, value) samples.
struct Family {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    samples: Vec<(Labels, f64)>,
}

fn family(name: &'static str, help: &'static str, kind: MetricType) -> Family {
    Family {
        name,
        help,
        kind,
        samples: Vec::new(),
    }
}

impl Family {
    fn add(&mut self, labels: Labels, v: f64) {
        self.samples.push((labels, v));
    }

    fn encode(&self, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if self.samples.is_empty() {
            return Ok(());
        }
        let mut f = enc.encode_descriptor(self.name, self.help, None, self.kind)?;
        for (labels, v) in &self.samples {
            let m = f.encode_family(labels)?;
            match self.kind {
                MetricType::Counter => prometheus_client::metrics::counter::ConstCounter::new(*v as u64).encode(m)?,
                _ => prometheus_client::metrics::gauge::ConstGauge::new(*v).encode(m)?,
            }
        }
        Ok(())
    }
}

fn l(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let api = &self.0;
        use MetricType::{Counter, Gauge};
        let mut rpo = family(
            "ferry_vpg_rpo_seconds",
            "Actual RPO: age of the oldest write not yet durable at the recovery site",
            Gauge,
        );
        let mut rpo_target = family("ferry_vpg_rpo_target_seconds", "The VPG's RPO target (its SLA)", Gauge);
        let mut sla = family(
            "ferry_vpg_meeting_sla",
            "1 while the actual RPO is within its target",
            Gauge,
        );
        let mut state = family(
            "ferry_vpg_state",
            "The VPG's state (the series of the current state is 1)",
            Gauge,
        );
        let mut j_used = family("ferry_vpg_journal_used_bytes", "Journal ring bytes in use", Gauge);
        let mut j_size = family("ferry_vpg_journal_size_bytes", "Journal ring size", Gauge);
        let mut shipped = family(
            "ferry_vpg_shipped_bytes",
            "Bytes of writes acknowledged by the recovery site since the agent started, by the VPG's priority",
            Counter,
        );
        let mut sent = family(
            "ferry_vpg_sent_bytes",
            "Bytes sent on the wire for the VPG (compressed and sealed) since the agent started",
            Counter,
        );
        let mut sync = family(
            "ferry_vpg_sync_progress_ratio",
            "Progress of an initial or delta sync under way, 0 to 1",
            Gauge,
        );
        let mut dirty = family(
            "ferry_vpg_dirty_bytes",
            "Bytes marked dirty (to be resent by a bitmap sync)",
            Gauge,
        );
        for v in api.vpgs.list() {
            let name = v.name.as_str();
            let kind = v.state_kind.map(|s| s.name()).unwrap_or("unknown");
            state.add(l(&[("vpg", name), ("state", kind)]), 1.0);
            j_used.add(l(&[("vpg", name)]), v.journal.used_bytes as f64);
            j_size.add(l(&[("vpg", name)]), v.journal.size_bytes as f64);
            dirty.add(
                l(&[("vpg", name)]),
                v.volumes.iter().map(|x| x.dirty_bytes).sum::<u64>() as f64,
            );
            let Some(p) = &v.protection else { continue };
            rpo.add(l(&[("vpg", name)]), p.rpo_s);
            rpo_target.add(l(&[("vpg", name)]), p.settings.rpo_s as f64);
            sla.add(l(&[("vpg", name)]), if p.meeting_sla { 1.0 } else { 0.0 });
            let prio = p.settings.priority.name();
            shipped.add(l(&[("vpg", name), ("priority", prio)]), p.ship.acked_bytes as f64);
            sent.add(l(&[("vpg", name), ("priority", prio)]), p.ship.sent_bytes as f64);
            if let Some(done) = p.initial_done_bytes {
                let ratio = done as f64 / p.initial_total_bytes.max(1) as f64;
                sync.add(l(&[("vpg", name), ("sync", "initial")]), ratio.min(1.0));
            }
            if let Some(d) = &p.delta {
                let ratio = d.compared_bytes as f64 / d.total_bytes.max(1) as f64;
                sync.add(l(&[("vpg", name), ("sync", "delta")]), ratio.min(1.0));
            }
        }
        let mut h_bytes = family(
            "ferry_replica_history_bytes",
            "History bytes held for the VPG at this recovery site",
            Gauge,
        );
        let mut h_max = family("ferry_replica_history_max_bytes", "The history's hard limit", Gauge);
        let mut h_span = family(
            "ferry_replica_history_span_seconds",
            "Time from the oldest point the history can recover to, to now",
            Gauge,
        );
        let mut received = family(
            "ferry_replica_last_received_timestamp_seconds",
            "When the replica last received writes",
            Gauge,
        );
        let now_ms = crate::clock::now_ms();
        for r in api.exports.replicas().all() {
            let st = r.status();
            let name = st.name.as_str();
            h_bytes.add(l(&[("vpg", name)]), st.history_bytes as f64);
            h_max.add(l(&[("vpg", name)]), st.history_bytes_max as f64);
            if let Some(oldest) = st.oldest_point_ms {
                h_span.add(l(&[("vpg", name)]), now_ms.saturating_sub(oldest) as f64 / 1000.0);
            }
            if st.last_received_ms > 0 {
                received.add(l(&[("vpg", name)]), st.last_received_ms as f64 / 1000.0);
            }
        }
        let mut link_up = family("ferry_link_up", "1 while the link to the peer is connected", Gauge);
        let mut connects = family(
            "ferry_link_connects",
            "Sessions opened to the peer since the agent started (reconnects and the first)",
            Counter,
        );
        let mut link_sent = family("ferry_link_sent_bytes", "Bytes sent to the peer", Counter);
        let mut link_recv = family("ferry_link_received_bytes", "Bytes received from the peer", Counter);
        for k in api.shipping.links() {
            let peer = k.peer.as_str();
            link_up.add(l(&[("peer", peer)]), if k.state == "connected" { 1.0 } else { 0.0 });
            connects.add(l(&[("peer", peer)]), k.connects.saturating_sub(1) as f64);
            link_sent.add(l(&[("peer", peer)]), k.sent_bytes as f64);
            link_recv.add(l(&[("peer", peer)]), k.received_bytes as f64);
        }
        let mut requests = family("ferry_nbd_requests", "NBD requests served, by volume and kind", Counter);
        let mut bytes = family(
            "ferry_nbd_bytes",
            "Bytes of NBD requests (read, written, or the range for the others)",
            Counter,
        );
        let mut errors = family("ferry_nbd_errors", "NBD requests answered with an error", Counter);
        let volumes = api.volumes.list_online();
        for v in &volumes {
            let name = v.record.name.as_str();
            for k in v.stats.kinds() {
                requests.add(l(&[("volume", name), ("kind", k.kind)]), k.requests as f64);
                bytes.add(l(&[("volume", name), ("kind", k.kind)]), k.bytes as f64);
                errors.add(l(&[("volume", name), ("kind", k.kind)]), k.errors as f64);
            }
        }
        let mut events = family(
            "ferry_events",
            "Events raised since the agent started, by kind",
            Counter,
        );
        for (k, n) in crate::events::hub().counts() {
            events.add(l(&[("kind", k.name())]), n as f64);
        }
        for f in [
            &rpo,
            &rpo_target,
            &sla,
            &state,
            &j_used,
            &j_size,
            &shipped,
            &sent,
            &sync,
            &dirty,
            &h_bytes,
            &h_max,
            &h_span,
            &received,
            &link_up,
            &connects,
            &link_sent,
            &link_recv,
            &requests,
            &bytes,
            &errors,
            &events,
        ] {
            f.encode(&mut enc)?;
        }
        if !volumes.is_empty() {
            let mut f = enc.encode_descriptor(
                "ferry_nbd_request_duration_seconds",
                "Time from an NBD request's arrival (with its payload) to its result, by volume",
                None,
                MetricType::Histogram,
            )?;
            for v in &volumes {
                let mut h = v.stats.latency();
                // The encoder names the bucket of f64::MAX "+Inf".
                for b in &mut h.buckets {
                    if b.0.is_infinite() {
                        b.0 = f64::MAX;
                    }
                }
                let labels = l(&[("volume", v.record.name.as_str())]);
                f.encode_family(&labels)?
                    .encode_histogram::<Labels>(h.sum_s, h.count, &h.buckets, None)?;
            }
        }
        Ok(())
    }
}

/// The whole exposition, as `/metrics` answers it.
pub(super) fn render(api: &Api) -> String {
    let mut reg = Registry::default();
    reg.register_collector(Box::new(Scrape(api.clone())));
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &reg).is_err() {
        out.clear();
        let _ = writeln!(out, "# the metrics could not be encoded");
    }
    out
}

/// The Prometheus text format (0.0.4) of an OpenMetrics exposition: a counter's HELP and
/// TYPE lines name it with its `_total` suffix, as its samples do, and there is no `# EOF`.
/// (prometheus-client writes OpenMetrics only; Prometheus's own text format is what
/// `promtool check metrics` and older scrapers read.)
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 64 * counters.len());
    for line in openmetrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters.contains(name).then(|| format!("{p}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// OpenMetrics when the scraper asks for it (Prometheus does), else the Prometheus text
/// format.
#[utoipa::path(get, path = "/metrics", tag = "status",
    responses((status = 200, description = "the Prometheus text format, or OpenMetrics when asked for", content_type = "text/plain", body = String), (status = "4XX", description = "refused, with why and what to do", body = ErrorBody)))]
pub(super) async fn metrics_h(
    axum::extract::State(api): axum::extract::State<Api>,
    headers: axum::http::HeaderMap,
) -> impl axum::response::IntoResponse {
    let openmetrics = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    let body = tokio::task::spawn_blocking(move || render(&api))
        .await
        .unwrap_or_default();
    if openmetrics {
        (
            [(
                axum::http::header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
    } else {
        (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            to_prometheus_text(&body),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::to_prometheus_text;

    #[test]
    fn counters_are_named_with_their_suffix_in_the_prometheus_format() {
        let om = "# HELP a_bytes Bytes.\n# TYPE a_bytes counter\na_bytes_total{x=\"1\"} 3\n# HELP g A gauge.\n# TYPE g gauge\ng 1.0\n# EOF\n";
        assert_eq!(
            to_prometheus_text(om),
            "# HELP a_bytes_total Bytes.\n# TYPE a_bytes_total counter\na_bytes_total{x=\"1\"} 3\n# HELP g A gauge.\n# TYPE g gauge\ng 1.0\n"
        );
    }
}
