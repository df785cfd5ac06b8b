//! Fails when an in-process path is slower than its budget.
//!
//! Reads the budgets table of `docs/benchmarks.md` (rows `| group/bench/param | N µs |`, p95 per
//! iteration) and criterion's samples under `target/criterion/*/new/sample.json`, prints both, and
//! exits 1 when any p95 is over budget or a budgeted bench has no samples. Run the benches first:
//!
//! ```text
//! scripts/bench-gate      # = cargo bench -p sluice-benches, then this
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a benchmark harness stops loudly")]

use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// `(bench id, budget in µs)` rows of the "## Budgets" section.
fn budgets(doc: &str) -> Vec<(String, f64)> {
    let section = doc.split("## Budgets").nth(1).unwrap_or("");
    let section = section.split("\n## ").next().unwrap_or("");
    section
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).filter(|c| !c.is_empty()).collect();
            let id = cells.first()?.trim_matches('`');
            let budget = cells.get(1)?.strip_suffix("µs")?.trim().parse::<f64>().ok()?;
            Some((id.to_owned(), budget))
        })
        .collect()
}

/// p95 of the per-iteration time of one bench, in µs.
fn p95_us(id: &str) -> Option<f64> {
    let path = workspace().join("target/criterion").join(id).join("new/sample.json");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    let iters = v["iters"].as_array()?;
    let times = v["times"].as_array()?;
    let mut per_iter: Vec<f64> = iters
        .iter()
        .zip(times)
        .filter_map(|(i, t)| Some(t.as_f64()? / i.as_f64()?.max(1.0) / 1000.0))
        .collect();
    if per_iter.is_empty() {
        return None;
    }
    per_iter.sort_by(f64::total_cmp);
    let idx = ((per_iter.len() as f64 * 0.95).ceil() as usize).clamp(1, per_iter.len()) - 1;
    Some(per_iter[idx])
}

fn main() {
    let doc = std::fs::read_to_string(workspace().join("docs/benchmarks.md")).expect("docs/benchmarks.md");
    let rows = budgets(&doc);
    assert!(!rows.is_empty(), "no budgets found under `## Budgets` in docs/benchmarks.md");
    let mut failed = 0;
    println!("| bench | p95 µs | budget µs | |");
    println!("|---|---|---|---|");
    for (id, budget) in &rows {
        match p95_us(id) {
            Some(p95) => {
                let ok = p95 <= *budget;
                failed += usize::from(!ok);
                println!("| {id} | {p95:.3} | {budget} | {} |", if ok { "ok" } else { "OVER BUDGET" });
            }
            None => {
                failed += 1;
                println!("| {id} | no samples (run `cargo bench -p sluice-benches`) | {budget} | MISSING |");
            }
        }
    }
    if failed > 0 {
        eprintln!("{failed} bench(es) over budget or missing");
        std::process::exit(1);
    }
}
