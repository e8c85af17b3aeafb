//! Prometheus text, read strictly.

/// One sample, `None` when the series is not exposed. `series` is the name with its labels
/// exactly as exposed, e.g. `relay_connections{kind="deployment"}`.
pub fn sample_opt(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse().expect("numeric sample"))
        })
}

/// One sample; a series that is not exposed panics (so an "is zero" check cannot pass for a
/// metric that does not exist).
pub fn sample(metrics: &str, series: &str) -> f64 {
    sample_opt(metrics, series).unwrap_or_else(|| panic!("{series} is not exposed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_found_by_name_and_labels_only() {
        let text = "# TYPE a counter\na{k=\"x\"} 3\na 1\nab 7\n";
        assert_eq!(sample(text, "a{k=\"x\"}"), 3.0);
        assert_eq!(sample(text, "a"), 1.0);
        assert_eq!(sample_opt(text, "b"), None);
    }

    #[test]
    #[should_panic(expected = "missing is not exposed")]
    fn a_missing_series_fails() {
        sample("a 1\n", "missing");
    }
}
