//! The summary of a run: ordered key/value pairs, printed for people or as JSON, and
//! the side-by-side table of `--compare`.

use std::fmt::Write;

#[derive(Clone, Debug, PartialEq)]
pub enum Val {
    Int(u64),
    Num(f64),
    Text(String),
    Null,
}

impl Val {
    pub fn opt(v: Option<f64>) -> Val {
        v.map(Val::Num).unwrap_or(Val::Null)
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Val::Int(i) => Some(*i as f64),
            Val::Num(f) => Some(*f),
            _ => None,
        }
    }

    fn human(&self) -> String {
        match self {
            Val::Int(i) => i.to_string(),
            Val::Num(f) if f.abs() >= 100.0 => format!("{f:.0}"),
            Val::Num(f) => format!("{f:.2}"),
            Val::Text(s) => s.clone(),
            Val::Null => "-".into(),
        }
    }

    fn json(&self) -> String {
        match self {
            Val::Int(i) => i.to_string(),
            Val::Num(f) if f.is_finite() => {
                let s = format!("{f:.3}");
                s.trim_end_matches('0').trim_end_matches('.').to_string()
            }
            Val::Num(_) | Val::Null => "null".into(),
            Val::Text(s) => json_string(s),
        }
    }
}

pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[derive(Default, Debug, Clone)]
pub struct Report {
    pub fields: Vec<(String, Val)>,
    pub errors: Vec<String>,
}

impl Report {
    pub fn set(&mut self, key: &str, v: Val) {
        match self.fields.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = v,
            None => self.fields.push((key.to_string(), v)),
        }
    }

    pub fn get(&self, key: &str) -> Option<&Val> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn ok(&self) -> bool {
        self.errors.is_empty()
    }

    pub fn human(&self) -> String {
        let w = self.fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut out = String::new();
        for (k, v) in &self.fields {
            let _ = writeln!(out, "{k:<w$}  {}", v.human());
        }
        for e in &self.errors {
            let _ = writeln!(out, "error: {e}");
        }
        out
    }

    pub fn json(&self) -> String {
        let mut parts: Vec<String> = self
            .fields
            .iter()
            .map(|(k, v)| format!("{}:{}", json_string(k), v.json()))
            .collect();
        let errs: Vec<String> = self.errors.iter().map(|e| json_string(e)).collect();
        parts.push(format!("\"error_messages\":[{}]", errs.join(",")));
        format!("{{{}}}", parts.join(","))
    }
}

/// The figures worth a ratio, and whether higher is better.
const COMPARED: &[(&str, bool)] = &[
    ("sent_msgs_per_s", true),
    ("confirmed_msgs_per_s", true),
    ("recv_msgs_per_s", true),
    ("latency_us_p50", false),
    ("latency_us_p95", false),
    ("latency_us_p99", false),
    ("latency_us_p999", false),
    ("latency_us_max", false),
    ("drain_msgs_per_s", true),
    ("tool_cpu_pct", false),
    ("broker_cpu_pct", false),
    ("other_cpu_pct", false),
    ("broker_rss_kb", false),
    ("broker_rss_per_connection_kb", false),
    ("broker_rss_per_queue_kb", false),
    ("broker_rss_per_msg_bytes", false),
];

/// `a / b` for each compared figure both runs have.
pub fn ratios(a: &Report, b: &Report) -> Vec<(&'static str, f64, f64, Option<f64>)> {
    COMPARED
        .iter()
        .filter_map(|(k, _)| {
            let x = a.get(k)?.as_f64()?;
            let y = b.get(k)?.as_f64()?;
            Some((*k, x, y, (y != 0.0).then(|| x / y)))
        })
        .collect()
}

pub fn compare_table(a_name: &str, a: &Report, b_name: &str, b: &Report) -> String {
    let mut out = format!("{:<30} {:>14} {:>14} {:>8}\n", "", a_name, b_name, "ratio");
    for (k, x, y, r) in ratios(a, b) {
        let r = r.map(|r| format!("{r:.2}")).unwrap_or_else(|| "-".into());
        let _ = writeln!(out, "{k:<30} {x:>14.1} {y:>14.1} {r:>8}");
    }
    out
}

pub fn compare_json(a: &Report, b: &Report) -> String {
    let r: Vec<String> = ratios(a, b)
        .into_iter()
        .map(|(k, _, _, r)| format!("{}:{}", json_string(k), Val::opt(r).json()))
        .collect();
    format!(
        "{{\"primary\":{},\"compare\":{},\"ratio\":{{{}}}}}",
        a.json(),
        b.json(),
        r.join(",")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_flat_and_escaped() {
        let mut r = Report::default();
        r.set("n", Val::Int(3));
        r.set("x", Val::Num(1.5));
        r.set("s", Val::Text("a\"b".into()));
        r.set("z", Val::Null);
        r.set("n", Val::Int(4));
        r.errors.push("bad\nthing".into());
        assert_eq!(
            r.json(),
            r#"{"n":4,"x":1.5,"s":"a\"b","z":null,"error_messages":["bad\nthing"]}"#
        );
    }

    #[test]
    fn ratios_skip_missing_and_zero() {
        let mut a = Report::default();
        let mut b = Report::default();
        a.set("recv_msgs_per_s", Val::Num(200.0));
        b.set("recv_msgs_per_s", Val::Num(100.0));
        a.set("broker_cpu_pct", Val::Num(50.0));
        b.set("broker_cpu_pct", Val::Num(0.0));
        a.set("latency_us_p50", Val::Num(5.0));
        let r = ratios(&a, &b);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0], ("recv_msgs_per_s", 200.0, 100.0, Some(2.0)));
        assert_eq!(r[1].3, None);
    }
}
