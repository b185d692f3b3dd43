//! The series of one scrape: every counter and derived value in total and per worker, each with
//! its own doc line as help, encoded in the Prometheus text format.

use std::fmt;

use epoll_echo::{Counter, Derived, Report};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{prometheus_text, DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::{Sample, Source};

/// Every series name starts with this.
const PREFIX: &str = "epoll_echo";

/// The exposition text for the counters now; `None` if encoding failed.
pub(super) fn render(workers: usize, source: &Source) -> Option<String> {
    let snapshot = Snapshot {
        sample: source(),
        workers,
    };
    let mut registry = Registry::default();
    registry.register_collector(Box::new(snapshot));
    let mut text = String::new();
    prometheus_text::encode(&mut text, &registry).ok()?;
    Some(text)
}

/// One scrape's worth of counters, written out as series.
#[derive(Debug)]
struct Snapshot {
    sample: Sample,
    workers: usize,
}

/// Whether a counter is a gauge rather than a count of events or bytes: the high-water mark only.
fn is_gauge(counter: Counter) -> bool {
    counter == Counter::PendingHighWater
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let info = Info::new(vec![
            ("version", env!("CARGO_PKG_VERSION").to_string()),
            ("workers", self.workers.to_string()),
        ]);
        let help = "The server's version and worker count.";
        info.encode(encoder.encode_descriptor(PREFIX, help, None, info.metric_type())?)?;

        let workers = &self.sample.per_worker;
        let mut total = Report::default();
        for report in workers {
            total += *report;
        }
        for counter in Counter::ALL {
            let gauge = is_gauge(counter);
            // The live cells never count a failed worker; the server does.
            if counter == Counter::WorkersFailed {
                let name = format!("{PREFIX}_{}", counter.name());
                let value = self.sample.failed_workers;
                series(&mut encoder, &name, counter.doc(), false, value)?;
                continue;
            }
            let name = format!("{PREFIX}_{}", counter.name());
            series(&mut encoder, &name, counter.doc(), gauge, total[counter])?;
            let name = format!("{PREFIX}_worker_{}", counter.name());
            let values = workers.iter().map(|r| r[counter]);
            per_worker(&mut encoder, &name, counter.doc(), gauge, values)?;
        }
        for derived in Derived::ALL {
            let gauge = derived.is_gauge();
            let name = format!("{PREFIX}_{}", derived.name());
            series(
                &mut encoder,
                &name,
                derived.doc(),
                gauge,
                derived.of(&total),
            )?;
            let name = format!("{PREFIX}_worker_{}", derived.name());
            let values = workers.iter().map(|r| derived.of(r));
            per_worker(&mut encoder, &name, derived.doc(), gauge, values)?;
        }
        Ok(())
    }
}

fn metric_type(gauge: bool) -> MetricType {
    if gauge {
        MetricType::Gauge
    } else {
        MetricType::Counter
    }
}

/// One series without labels (a counter gets the `_total` suffix from the encoder).
fn series(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    gauge: bool,
    value: u64,
) -> Result<(), fmt::Error> {
    let metric = encoder.encode_descriptor(name, help, None, metric_type(gauge))?;
    if gauge {
        ConstGauge::new(value).encode(metric)
    } else {
        ConstCounter::new(value).encode(metric)
    }
}

/// One series per worker, labelled `worker="N"`.
fn per_worker(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    gauge: bool,
    values: impl Iterator<Item = u64>,
) -> Result<(), fmt::Error> {
    let help = format!("{help} Per worker.");
    let mut family = encoder.encode_descriptor(name, &help, None, metric_type(gauge))?;
    for (index, value) in values.enumerate() {
        let labels = [("worker", index.to_string())];
        let metric = family.encode_family(&labels)?;
        if gauge {
            ConstGauge::new(value).encode(metric)?;
        } else {
            ConstCounter::new(value).encode(metric)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A report whose counters are all distinct, offset by `base`.
    fn distinct(base: u64) -> Report {
        let line = Counter::ALL
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{}={}", c.name(), base + 10 * i as u64))
            .collect::<Vec<_>>()
            .join(" ");
        Report::parse(&line).expect("a line of every counter")
    }

    /// The value of the sample line that starts with `series ` (name and labels).
    fn value(text: &str, series: &str) -> u64 {
        let prefix = format!("{series} ");
        let line = text
            .lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no {series} in\n{text}"));
        line[prefix.len()..].parse().expect("an integer value")
    }

    fn sample() -> Sample {
        Sample {
            per_worker: vec![distinct(1), distinct(1000)],
            failed_workers: 1,
        }
    }

    #[test]
    fn every_counter_is_shown_per_worker_and_in_total() {
        let source: Source = Box::new(sample);
        let text = render(2, &source).expect("encodes");
        let (a, b) = (distinct(1), distinct(1000));
        let mut total = a;
        total += b;
        for counter in Counter::ALL {
            if counter == Counter::WorkersFailed {
                continue;
            }
            let suffix = if is_gauge(counter) { "" } else { "_total" };
            let name = counter.name();
            assert_eq!(
                value(&text, &format!("epoll_echo_{name}{suffix}")),
                total[counter]
            );
            for (i, r) in [a, b].iter().enumerate() {
                let series = format!("epoll_echo_worker_{name}{suffix}{{worker=\"{i}\"}}");
                assert_eq!(value(&text, &series), r[counter], "{series}");
            }
            assert!(text.contains(&format!(
                "# HELP epoll_echo_{name}{suffix} {}\n",
                counter.doc()
            )));
        }
        // The high-water mark is the larger of the workers', not their sum.
        let high = value(&text, "epoll_echo_pending_high_water_bytes");
        assert_eq!(
            high,
            a[Counter::PendingHighWater].max(b[Counter::PendingHighWater])
        );
        assert!(text.contains("# TYPE epoll_echo_pending_high_water_bytes gauge\n"));
        assert!(text.contains("# TYPE epoll_echo_active gauge\n"));
        assert_eq!(value(&text, "epoll_echo_active"), total.active());
        let delivered = value(&text, "epoll_echo_bytes_delivered_total");
        assert_eq!(delivered, total[Counter::BytesDelivered]);
        let outstanding = value(&text, "epoll_echo_bytes_outstanding");
        assert_eq!(outstanding, total.derived(Derived::BytesOutstanding));
        assert!(text.contains("# TYPE epoll_echo_bytes_outstanding gauge\n"));
        assert_eq!(value(&text, "epoll_echo_workers_failed_total"), 1);
        let info = format!(
            "epoll_echo_info{{version=\"{}\",workers=\"2\"}}",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(value(&text, &info), 1);
    }
}
