//! Prometheus metrics in the text exposition format, named after vLLM's
//! (`marlin:` prefix). Latency histograms are observed by the HTTP layer from
//! the times tokens reach it; engine gauges and counters come from the
//! backend's statistics at scrape time.

use std::fmt::Write;
use std::sync::Mutex;

use crate::backend::BackendStats;

/// Bucket upper bounds in seconds (vLLM's TTFT buckets, extended).
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0,
];

#[derive(Clone, Debug)]
pub struct Histogram {
    /// Count per bucket of `LATENCY_BUCKETS` (not cumulative), then +Inf.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: vec![0; LATENCY_BUCKETS.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }
}

impl Histogram {
    pub fn observe(&mut self, seconds: f64) {
        if !seconds.is_finite() || seconds < 0.0 {
            return;
        }
        let i = LATENCY_BUCKETS
            .iter()
            .position(|&b| seconds <= b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.counts[i] += 1;
        self.sum += seconds;
        self.count += 1;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    fn render(&self, out: &mut String, name: &str, help: &str, labels: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0u64;
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            cumulative += self.counts[i];
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.counts[LATENCY_BUCKETS.len()];
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

/// Everything the HTTP layer observes itself.
#[derive(Default, Debug)]
pub struct HttpMetrics {
    pub time_to_first_token: Histogram,
    pub inter_token_latency: Histogram,
    pub e2e_latency: Histogram,
    /// Finished requests by finish reason.
    pub finished_stop: u64,
    pub finished_length: u64,
    pub finished_cancelled: u64,
    pub finished_error: u64,
    /// Rejections by HTTP status.
    pub rejected_4xx: u64,
    pub rejected_429: u64,
}

pub struct Metrics {
    model_name: String,
    http: Mutex<HttpMetrics>,
}

impl Metrics {
    pub fn new(model_name: &str) -> Self {
        Self {
            model_name: model_name.to_string(),
            http: Mutex::new(HttpMetrics::default()),
        }
    }

    /// Runs `f` on the HTTP-side metrics (poisoning is ignored: metrics are
    /// best-effort and must never take the server down).
    pub fn with<R>(&self, f: impl FnOnce(&mut HttpMetrics) -> R) -> R {
        let mut guard = match self.http.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }

    /// The `/metrics` body.
    pub fn render(&self, engine: &BackendStats) -> String {
        let labels = format!("model_name=\"{}\"", escape_label(&self.model_name));
        let mut out = String::with_capacity(8192);
        let gauge = |out: &mut String, name: &str, help: &str, v: f64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{{labels}}} {v}"
            );
        };
        // Counts (u64) and seconds (f64) alike.
        let counter = |out: &mut String, name: &str, help: &str, v: &dyn std::fmt::Display| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name}{{{labels}}} {v}"
            );
        };
        gauge(
            &mut out,
            "marlin:num_requests_running",
            "Requests in the running batch.",
            engine.running as f64,
        );
        gauge(
            &mut out,
            "marlin:num_requests_waiting",
            "Requests waiting to be scheduled.",
            engine.waiting as f64,
        );
        gauge(
            &mut out,
            "marlin:kv_cache_usage_perc",
            "Fraction of KV-cache blocks in use (0-1).",
            engine.kv_cache_usage,
        );
        counter(
            &mut out,
            "marlin:prompt_tokens_total",
            "Prompt tokens processed.",
            &engine.prompt_tokens,
        );
        counter(
            &mut out,
            "marlin:generation_tokens_total",
            "Tokens generated.",
            &engine.generation_tokens,
        );
        counter(
            &mut out,
            "marlin:num_preemptions_total",
            "Sequences preempted (recomputed later).",
            &engine.preemptions,
        );
        counter(
            &mut out,
            "marlin:prefix_cache_queries_total",
            "Prompt blocks looked up in the prefix cache.",
            &engine.prefix_cache_queries,
        );
        counter(
            &mut out,
            "marlin:prefix_cache_hits_total",
            "Prompt blocks found in the prefix cache.",
            &engine.prefix_cache_hits,
        );
        counter(
            &mut out,
            "marlin:engine_steps_total",
            "Engine steps that ran a forward pass.",
            &engine.engine_steps,
        );
        counter(
            &mut out,
            "marlin:engine_forward_seconds_total",
            "Seconds in the engine steps' forward passes (results back on the host).",
            &engine.engine_forward_seconds,
        );
        counter(
            &mut out,
            "marlin:engine_step_seconds_total",
            "Seconds in whole engine steps (scheduling, forward pass, sampling, sending tokens).",
            &engine.engine_step_seconds,
        );
        self.with(|m| {
            let _ = writeln!(out, "# HELP marlin:request_success_total Finished requests by finish reason.");
            let _ = writeln!(out, "# TYPE marlin:request_success_total counter");
            for (reason, v) in [("stop", m.finished_stop), ("length", m.finished_length), ("abort", m.finished_cancelled), ("error", m.finished_error)] {
                let _ = writeln!(out, "marlin:request_success_total{{{labels},finished_reason=\"{reason}\"}} {v}");
            }
            let _ = writeln!(out, "# HELP marlin:request_rejected_total Requests rejected before generation, by status class.");
            let _ = writeln!(out, "# TYPE marlin:request_rejected_total counter");
            let _ = writeln!(out, "marlin:request_rejected_total{{{labels},status=\"4xx\"}} {}", m.rejected_4xx);
            let _ = writeln!(out, "marlin:request_rejected_total{{{labels},status=\"429\"}} {}", m.rejected_429);
            m.time_to_first_token.render(&mut out, "marlin:time_to_first_token_seconds", "Time from request arrival to the first token.", &labels);
            m.inter_token_latency.render(&mut out, "marlin:inter_token_latency_seconds", "Time between consecutive tokens of a request.", &labels);
            m.e2e_latency.render(&mut out, "marlin:e2e_request_latency_seconds", "Time from request arrival to its end.", &labels);
        });
        out
    }
}

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_sum() {
        let mut h = Histogram::default();
        for s in [0.0005, 0.003, 0.003, 1.5, 1000.0, f64::NAN, -1.0] {
            h.observe(s);
        }
        assert_eq!(h.count(), 5);
        let mut out = String::new();
        h.render(&mut out, "x", "help", "a=\"b\"");
        assert!(out.contains("x_bucket{a=\"b\",le=\"0.001\"} 1\n"));
        assert!(out.contains("x_bucket{a=\"b\",le=\"0.005\"} 3\n"));
        assert!(out.contains("x_bucket{a=\"b\",le=\"2.5\"} 4\n"));
        assert!(out.contains("x_bucket{a=\"b\",le=\"+Inf\"} 5\n"));
        assert!(out.contains("x_count{a=\"b\"} 5\n"));
    }

    #[test]
    fn render_has_every_family_once() {
        let m = Metrics::new("demo\"model");
        m.with(|h| h.time_to_first_token.observe(0.2));
        let text = m.render(&BackendStats::default());
        for family in [
            "marlin:num_requests_running",
            "marlin:num_requests_waiting",
            "marlin:kv_cache_usage_perc",
            "marlin:prompt_tokens_total",
            "marlin:generation_tokens_total",
            "marlin:num_preemptions_total",
            "marlin:prefix_cache_hits_total",
            "marlin:engine_steps_total",
            "marlin:engine_forward_seconds_total",
            "marlin:engine_step_seconds_total",
            "marlin:time_to_first_token_seconds",
            "marlin:inter_token_latency_seconds",
            "marlin:e2e_request_latency_seconds",
        ] {
            assert_eq!(
                text.matches(&format!("# TYPE {family} ")).count(),
                1,
                "{family}"
            );
        }
        assert!(text.contains("model_name=\"demo\\\"model\""));
        assert!(text
            .contains("marlin:time_to_first_token_seconds_count{model_name=\"demo\\\"model\"} 1"));
    }
}
