//! What `sweep` prints: the human-readable report, and the one JSON object
//! of `--json` (the report, or the error with what had been done by then).

use token_sweeper::sweep::{Counts, SweepMode, SweepReport};

/// The `sweep --json` object of a sweep that succeeded: the report, and a
/// null `error`, so that a script can always read `.error`.
#[derive(serde::Serialize)]
pub struct JsonReport<'a> {
    #[serde(flatten)]
    pub report: &'a SweepReport,
    pub error: Option<String>,
}

/// The `sweep --json` object of a sweep that failed or never started: the
/// error and what had been done when it stopped.
#[derive(serde::Serialize)]
pub struct JsonFailure {
    pub mode: SweepMode,
    pub error: String,
    #[serde(flatten)]
    pub counts: Counts,
    pub first_error: Option<String>,
    pub duration_seconds: f64,
    pub throttled_seconds: f64,
}

/// One JSON object on one line of stdout.
pub fn print_json(value: &impl serde::Serialize) {
    match serde_json::to_string(value) {
        Ok(line) => println!("{line}"),
        Err(e) => eprintln!("token-sweeper: cannot encode the report: {e}"),
    }
}

/// The human-readable report of a one-shot sweep.
pub fn print_report(report: &SweepReport) {
    println!(
        "swept {} keys in {:.2}s ({}/s){}",
        thousands(report.counts.keys_scanned),
        report.duration_seconds,
        thousands(report.keys_per_second as u64),
        if report.interrupted {
            ", interrupted before the end"
        } else {
            ""
        }
    );
    for (kind, n) in report.counts.iter() {
        if let Some(label) = kind.line_label(report.mode, n) {
            row(label, thousands(n));
        }
    }
    if report.throttled_seconds > 0.0 {
        row(
            "throttled",
            format!(
                "{:.2}s (yielding to other clients; --throttle off for full speed)",
                report.throttled_seconds
            ),
        );
    }
    if let Some(index) = &report.index {
        let entries = index.index_size.map_or(String::new(), |size| {
            format!("{} entries, ", thousands(size))
        });
        row(
            "due index",
            format!("{entries}oldest due {:.0}s ago", index.index_lag_seconds),
        );
    }
    row(
        "cutoff",
        format!("{} ({})", report.cutoff, report.score_unit),
    );
    if report.mode == SweepMode::DryRun {
        println!("  dry run: nothing was removed");
    }
    if let Some(first) = &report.first_error {
        row("first error", first);
    }
    if report.nodes.len() > 1 {
        for node in &report.nodes {
            let state = match &node.unfinished_reason {
                Some(reason) => format!("NOT FINISHED: {reason}"),
                None if node.finished => "finished".to_owned(),
                None => "interrupted".to_owned(),
            };
            println!(
                "  node {:<21} {} keys, {} removed, {state}",
                node.node,
                thousands(node.counts.keys_scanned),
                thousands(node.counts.members_removed),
            );
        }
    }
    if !report.unfinished_nodes.is_empty() {
        row(
            "unfinished nodes",
            format!(
                "{} (the next sweep covers them)",
                report.unfinished_nodes.join(", ")
            ),
        );
    }
}

/// One line of the report: the label in a column of its own, then the value.
fn row(label: &str, value: impl std::fmt::Display) {
    println!("  {label:<19} {value}");
}

/// 1234567 -> "1,234,567".
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::thousands;

    #[test]
    fn thousands_are_separated_by_commas() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
