//! What a bench found: a Markdown section for BENCHMARKS.md and summary
//! rows (figure, value, goal, met), printed, and written as JSON to
//! `$OZ_BENCH_REPORT` when `cargo xtask bench` asks for it.

use serde_json::json;

pub struct Report {
    name: &'static str,
    title: String,
    markdown: String,
    summary: Vec<serde_json::Value>,
}

/// A goal's verdict as a table cell.
pub fn verdict(met: bool) -> String {
    if met {
        "met".to_string()
    } else {
        "**missed**".to_string()
    }
}

impl Report {
    /// `name` is the bench's target name; `title` heads its section.
    pub fn new(name: &'static str, title: &str) -> Report {
        Report {
            name,
            title: title.to_string(),
            markdown: String::new(),
            summary: Vec::new(),
        }
    }

    /// A paragraph.
    pub fn text(&mut self, text: &str) {
        self.markdown.push_str(text.trim());
        self.markdown.push_str("\n\n");
    }

    pub fn table(&mut self, header: &[&str], rows: &[Vec<String>]) {
        let line = |cells: &mut dyn Iterator<Item = &str>| {
            let cells: Vec<&str> = cells.collect();
            format!("| {} |\n", cells.join(" | "))
        };
        self.markdown.push_str(&line(&mut header.iter().copied()));
        self.markdown
            .push_str(&line(&mut header.iter().map(|_| "---")));
        for r in rows {
            self.markdown
                .push_str(&line(&mut r.iter().map(String::as_str)));
        }
        self.markdown.push('\n');
    }

    /// A headline figure for the summary table; `met` is None for a figure
    /// without a goal.
    pub fn goal(&mut self, figure: &str, value: &str, goal: &str, met: Option<bool>) {
        self.summary.push(json!({
            "figure": figure,
            "value": value,
            "goal": goal,
            "met": met,
        }));
    }

    /// Prints the section and writes it where `cargo xtask bench` reads it.
    pub fn finish(self) {
        println!("\n## {}\n\n{}", self.title, self.markdown);
        let Some(path) = std::env::var_os("OZ_BENCH_REPORT") else {
            return;
        };
        let doc = json!({
            "name": self.name,
            "title": self.title,
            "markdown": self.markdown,
            "summary": self.summary,
        });
        if let Err(e) = std::fs::write(&path, serde_json::to_vec_pretty(&doc).unwrap()) {
            eprintln!("cannot write the report to {}: {e}", path.to_string_lossy());
            std::process::exit(1);
        }
    }
}
