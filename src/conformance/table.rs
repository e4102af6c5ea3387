//! Truth tables: expected (from a case's patterns), observed (from a backend), their
//! comparison, and the upstream e2e rendering (rows = from, columns = to).

use std::fmt::Write as _;

use serde::Serialize;

use super::backend::Observed;
use super::case::{Expect, Expectations, Reach};
use crate::policy::ObjectName;

/// A square table over `pods`, row-major: cell (i, j) is pods[i] -> pods[j].
#[derive(Debug, Clone, PartialEq)]
pub struct Grid<T> {
    pub pods: Vec<ObjectName>,
    cells: Vec<T>,
}

impl<T: Clone> Grid<T> {
    pub fn new(pods: Vec<ObjectName>, cells: Vec<T>) -> Grid<T> {
        assert_eq!(cells.len(), pods.len() * pods.len(), "grid must be square");
        Grid { pods, cells }
    }

    pub fn filled(pods: Vec<ObjectName>, value: T) -> Grid<T> {
        let n = pods.len();
        Grid::new(pods, vec![value; n * n])
    }

    pub fn get(&self, i: usize, j: usize) -> &T {
        &self.cells[i * self.pods.len() + j]
    }

    pub fn set(&mut self, i: usize, j: usize, v: T) {
        let n = self.pods.len();
        self.cells[i * n + j] = v;
    }

    /// Every off-diagonal cell (loopback is ignored everywhere), in row order.
    pub fn pairs(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        let n = self.pods.len();
        (0..n).flat_map(move |i| (0..n).filter(move |j| *j != i).map(move |j| (i, j)))
    }

    /// Upstream style: a header row of destinations, then one row per source.
    pub fn render(&self, cell: impl Fn(usize, usize, &T) -> char) -> String {
        let mut s = String::from("-");
        for p in &self.pods {
            let _ = write!(s, "\t{p}");
        }
        s.push('\n');
        for (i, from) in self.pods.iter().enumerate() {
            s.push_str(&from.to_string());
            for j in 0..self.pods.len() {
                s.push('\t');
                s.push(cell(i, j, self.get(i, j)));
            }
            s.push('\n');
        }
        s
    }

    /// One string per row, for JSON (same characters as [`Grid::render`]).
    pub fn rows(&self, cell: impl Fn(usize, usize, &T) -> char) -> Vec<String> {
        (0..self.pods.len())
            .map(|i| {
                (0..self.pods.len())
                    .map(|j| cell(i, j, self.get(i, j)))
                    .collect()
            })
            .collect()
    }
}

/// The expected table of one probe over the pods that exist at that step.
pub fn expected(pods: &[ObjectName], e: &Expectations) -> Grid<bool> {
    let mut cells = Vec::with_capacity(pods.len() * pods.len());
    for from in pods {
        for to in pods {
            cells.push(e.allowed(from, to));
        }
    }
    Grid::new(pods.to_vec(), cells)
}

/// How one cell compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CellResult {
    Match,
    Mismatch,
    Skipped,
    /// Pod to itself: not probed, not compared.
    Loopback,
}

pub fn compare(expected: &Grid<bool>, observed: &Grid<Observed>) -> Grid<CellResult> {
    assert_eq!(expected.pods, observed.pods);
    let mut out = Grid::filled(expected.pods.clone(), CellResult::Loopback);
    for (i, j) in expected.pairs() {
        let r = match (observed.get(i, j), *expected.get(i, j)) {
            (Observed::Skipped(_), _) => CellResult::Skipped,
            (Observed::Allowed, true) | (Observed::Blocked, false) => CellResult::Match,
            _ => CellResult::Mismatch,
        };
        out.set(i, j, r);
    }
    out
}

/// `.` allowed, `X` blocked; loopback is always shown as `.` (it is ignored).
pub fn expected_char(i: usize, j: usize, v: &bool) -> char {
    if i == j || *v {
        '.'
    } else {
        'X'
    }
}

/// `.` allowed, `X` blocked, `?` skipped.
pub fn observed_char(i: usize, j: usize, v: &Observed) -> char {
    match v {
        _ if i == j => '.',
        Observed::Allowed => '.',
        Observed::Blocked => 'X',
        Observed::Skipped(_) => '?',
    }
}

/// `.` match (or loopback), `X` mismatch, `?` skipped.
pub fn comparison_char(_: usize, _: usize, v: &CellResult) -> char {
    match v {
        CellResult::Match | CellResult::Loopback => '.',
        CellResult::Mismatch => 'X',
        CellResult::Skipped => '?',
    }
}

/// Writes a table as case expectations: the majority value first, then whole columns and rows
/// that differ from it, then single cells, so a reproduction file stays readable.
pub fn to_expectations(t: &Grid<bool>) -> Vec<Expect> {
    let n = t.pods.len();
    let pairs: Vec<(usize, usize)> = t.pairs().collect();
    let allowed = pairs.iter().filter(|(i, j)| *t.get(*i, *j)).count();
    let start = allowed * 2 >= pairs.len();
    let mut out = vec![Expect::All(if start {
        Reach::Allowed
    } else {
        Reach::Blocked
    })];
    let mk = |v: bool, pattern: String| {
        if v {
            Expect::Allowed(pattern)
        } else {
            Expect::Blocked(pattern)
        }
    };
    // What the entries so far say, to emit only the cells that still differ.
    let mut current = Grid::filled(t.pods.clone(), start);
    for j in 0..n {
        let col_differs = (0..n).filter(|i| *i != j).all(|i| *t.get(i, j) != start);
        if n > 2 && col_differs {
            out.push(mk(!start, format!("*/* -> {}", t.pods[j])));
            (0..n).for_each(|i| current.set(i, j, !start));
        }
    }
    for i in 0..n {
        let row_differs = (0..n).filter(|j| *j != i).all(|j| *t.get(i, j) != start);
        if n > 2 && row_differs {
            out.push(mk(!start, format!("{} -> */*", t.pods[i])));
            (0..n).for_each(|j| current.set(i, j, !start));
        }
    }
    for (i, j) in t.pairs() {
        if t.get(i, j) != current.get(i, j) {
            out.push(mk(*t.get(i, j), format!("{} -> {}", t.pods[i], t.pods[j])));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods() -> Vec<ObjectName> {
        ["x/a", "x/b", "y/a", "y/b"]
            .iter()
            .map(|s| ObjectName::parse(s))
            .collect()
    }

    #[test]
    fn rendering_is_upstream_style() {
        let e = Expectations::parse(&[
            Expect::All(Reach::Allowed),
            Expect::Blocked("*/* -> x/*".into()),
        ])
        .unwrap();
        let t = expected(&pods(), &e);
        let s = t.render(expected_char);
        assert_eq!(
            s,
            "-\tx/a\tx/b\ty/a\ty/b\nx/a\t.\tX\t.\t.\nx/b\tX\t.\t.\t.\ny/a\tX\tX\t.\t.\ny/b\tX\tX\t.\t.\n"
        );
    }

    #[test]
    fn expectations_written_from_a_table_give_the_table_back() {
        let pods = pods();
        let n = pods.len();
        // Every 12-bit pattern of the off-diagonal cells.
        for bits in 0u32..(1 << (n * (n - 1))) {
            let mut t = Grid::filled(pods.clone(), true);
            for (k, (i, j)) in t.clone().pairs().enumerate() {
                t.set(i, j, bits & (1 << k) != 0);
            }
            let e = Expectations::parse(&to_expectations(&t)).unwrap();
            let back = expected(&pods, &e);
            for (i, j) in t.pairs() {
                assert_eq!(back.get(i, j), t.get(i, j), "bits {bits:b} cell {i},{j}");
            }
        }
    }

    #[test]
    fn comparison_ignores_loopback_and_marks_skips() {
        let p = pods();
        let exp = Grid::filled(p.clone(), true);
        let mut obs = Grid::filled(p.clone(), Observed::Allowed);
        obs.set(0, 0, Observed::Blocked);
        obs.set(0, 1, Observed::Blocked);
        obs.set(0, 2, Observed::Skipped("no".into()));
        let c = compare(&exp, &obs);
        assert_eq!(*c.get(0, 0), CellResult::Loopback);
        assert_eq!(*c.get(0, 1), CellResult::Mismatch);
        assert_eq!(*c.get(0, 2), CellResult::Skipped);
        assert_eq!(c.rows(comparison_char)[0], ".X?.");
    }
}
