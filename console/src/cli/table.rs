//! Plain aligned text tables for terminals and logs.

/// A table with a header row. Columns are separated by two spaces; numeric columns can be
/// right-aligned; the last column is not padded, so lines carry no trailing spaces.
#[derive(Debug, Clone)]
pub struct Table {
    headers: Vec<String>,
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Self {
        Self {
            headers: headers
                .iter()
                .map(std::string::ToString::to_string)
                .collect(),
            right: vec![false; headers.len()],
            rows: Vec::new(),
        }
    }

    /// Right-aligns column `index`.
    pub fn align_right(mut self, index: usize) -> Self {
        self.right[index] = true;
        self
    }

    pub fn push(&mut self, row: Vec<String>) {
        debug_assert_eq!(row.len(), self.headers.len());
        self.rows.push(row);
    }

    pub fn render(&self) -> String {
        let n = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let header: Vec<String> = self.headers.clone();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                let pad = widths[i] - cell.chars().count();
                if self.right[i] {
                    line.extend(std::iter::repeat_n(' ', pad));
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    if i + 1 < n {
                        line.extend(std::iter::repeat_n(' ', pad));
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_columns() {
        let mut t = Table::new(&["INSTANCE", "OUTCOME", "MS", "DETAIL"]).align_right(2);
        t.push(vec![
            "gw-1".into(),
            "ok".into(),
            "1.2".into(),
            String::new(),
        ]);
        t.push(vec![
            "gateway-22".into(),
            "error NOT_FOUND".into(),
            "13.0".into(),
            "no such export".into(),
        ]);
        assert_eq!(
            t.render(),
            "INSTANCE    OUTCOME            MS  DETAIL\n\
             gw-1        ok                1.2\n\
             gateway-22  error NOT_FOUND  13.0  no such export\n"
        );
    }

    #[test]
    fn header_only() {
        assert_eq!(Table::new(&["A", "B"]).render(), "A  B\n");
    }
}
