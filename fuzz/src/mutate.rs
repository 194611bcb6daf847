//! Mutations: byte-level ones for every input, and structure-aware ones for inputs that are
//! JSON or lines of text (SDP), so most mutants still get past the first parse and reach
//! the checks behind it.

use serde_json::{Map, Value};

/// A small, fast, seedable generator (xorshift64*): runs repeat for a given seed.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value).
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    pub fn bits(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.bits() % n as u64) as usize
        }
    }

    /// True one time in `n`.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    fn pick<'a, T>(&mut self, xs: &'a [T]) -> Option<&'a T> {
        xs.get(self.below(xs.len()))
    }
}

/// How a target's input is built, which chooses the structure-aware mutations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Binary: byte-level mutations only.
    Bytes,
    /// JSON text.
    Json,
    /// A first line (a name), then JSON.
    HeadJson,
    /// Lines of text (SDP, or Base64 frames).
    Lines,
}

/// Tokens taken from the seeds (JSON keys and strings, words of text) to splice in.
#[derive(Default)]
pub struct Dictionary {
    words: Vec<Vec<u8>>,
    values: Vec<Value>,
}

impl Dictionary {
    /// Collects tokens from one seed.
    pub fn learn(&mut self, shape: Shape, input: &[u8]) {
        let (_, body) = split_head(shape, input);
        if let Ok(v) = serde_json::from_slice::<Value>(body) {
            self.learn_value(&v);
        }
        for w in input.split(|b| b" \n\r\t=:;,/\"{}[]".contains(b)) {
            if (2..=40).contains(&w.len())
                && self.words.len() < 4096
                && !self.words.iter().any(|x| x == w)
            {
                self.words.push(w.to_vec());
            }
        }
    }

    fn learn_value(&mut self, v: &Value) {
        if self.values.len() < 4096 && !matches!(v, Value::Object(_) | Value::Array(_)) {
            self.values.push(v.clone());
        }
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    if self.values.len() < 4096 {
                        self.values.push(Value::String(k.clone()));
                    }
                    self.learn_value(x);
                }
            }
            Value::Array(a) => a.iter().for_each(|x| self.learn_value(x)),
            _ => {}
        }
    }
}

fn split_head(shape: Shape, input: &[u8]) -> (&[u8], &[u8]) {
    match (shape, input.iter().position(|b| *b == b'\n')) {
        (Shape::HeadJson, Some(i)) => (&input[..=i], &input[i + 1..]),
        _ => (&[][..], input),
    }
}

/// Values at the edges of what parsers expect.
fn edge_value(rng: &mut Rng) -> Value {
    match rng.below(14) {
        0 => Value::Null,
        1 => Value::Bool(rng.one_in(2)),
        2 => Value::from(0),
        3 => Value::from(-1),
        4 => Value::from(u64::MAX),
        5 => Value::from(i64::MIN),
        6 => Value::from(9_007_199_254_740_993u64),
        7 => serde_json::Number::from_f64(1e308).map_or(Value::Null, Value::Number),
        8 => Value::String(String::new()),
        9 => Value::String("a".repeat(1 << rng.below(17))),
        10 => Value::String("<img src=x onerror=alert(1)>\u{0}\u{202e}é😀".into()),
        11 => Value::Array(Vec::new()),
        12 => Value::Object(Map::new()),
        _ => {
            // Deep nesting, short of serde_json's recursion limit and past it.
            let mut v = Value::Null;
            for _ in 0..[8, 120, 200][rng.below(3)] {
                v = Value::Array(vec![v]);
            }
            v
        }
    }
}

/// Mutates one node of `v`, chosen at random along a path from the root.
fn mutate_value(v: &mut Value, rng: &mut Rng, dict: &Dictionary, depth: usize) {
    let descend = depth < 12 && !rng.one_in(3);
    match v {
        Value::Object(m) if descend && !m.is_empty() => {
            let key = m
                .keys()
                .nth(rng.below(m.len()))
                .cloned()
                .unwrap_or_default();
            match rng.below(6) {
                0 => {
                    m.remove(&key);
                }
                1 => {
                    let k = match dict.values.get(rng.below(dict.values.len().max(1))) {
                        Some(Value::String(s)) => s.clone(),
                        _ => format!("k{}", rng.below(100)),
                    };
                    let val = new_value(rng, dict);
                    m.insert(k, val);
                }
                _ => {
                    if let Some(x) = m.get_mut(&key) {
                        mutate_value(x, rng, dict, depth + 1);
                    }
                }
            }
        }
        Value::Array(a) if descend && !a.is_empty() => match rng.below(5) {
            0 => {
                a.remove(rng.below(a.len()));
            }
            1 => {
                let x = a[rng.below(a.len())].clone();
                for _ in 0..1 << rng.below(8) {
                    a.push(x.clone());
                }
            }
            _ => {
                let i = rng.below(a.len());
                mutate_value(&mut a[i], rng, dict, depth + 1);
            }
        },
        _ if rng.one_in(2) => tweak_value(v, rng, dict),
        _ => *v = new_value(rng, dict),
    }
}

/// Changes a value without changing its type (most fields are checked by type first).
fn tweak_value(v: &mut Value, rng: &mut Rng, dict: &Dictionary) {
    match v {
        Value::Bool(b) => *b = !*b,
        Value::Number(n) => {
            let x = n.as_i64().unwrap_or(0);
            let y = match rng.below(5) {
                0 => x.wrapping_add(1),
                1 => x.wrapping_sub(1),
                2 => x.wrapping_mul(2),
                3 => x.wrapping_neg(),
                _ => [
                    0,
                    1,
                    255,
                    256,
                    65_535,
                    65_536,
                    i32::MAX as i64,
                    u32::MAX as i64,
                ][rng.below(8)],
            };
            *v = Value::from(y);
        }
        Value::String(s) => match rng.below(5) {
            0 => s.truncate(
                s.char_indices()
                    .nth(rng.below(s.len() + 1))
                    .map_or(s.len(), |(i, _)| i),
            ),
            1 => s.push_str(["a", "\u{0}", "/", ":", "!", "@", "é", "\n", " "][rng.below(9)]),
            2 => *s = s.repeat(2 + rng.below(64)),
            _ => {
                if let Some(Value::String(d)) = dict.values.get(rng.below(dict.values.len().max(1)))
                {
                    *s = d.clone();
                }
            }
        },
        _ => *v = new_value(rng, dict),
    }
}

fn new_value(rng: &mut Rng, dict: &Dictionary) -> Value {
    if !dict.values.is_empty() && rng.one_in(2) {
        dict.values[rng.below(dict.values.len())].clone()
    } else {
        edge_value(rng)
    }
}

fn mutate_lines(input: &[u8], rng: &mut Rng, dict: &Dictionary, other: &[u8]) -> Vec<u8> {
    let mut lines: Vec<Vec<u8>> = input.split(|b| *b == b'\n').map(<[u8]>::to_vec).collect();
    let i = rng.below(lines.len());
    match rng.below(6) {
        0 if lines.len() > 1 => {
            lines.remove(i);
        }
        1 => {
            let l = lines[i].clone();
            lines.insert(rng.below(lines.len() + 1), l);
        }
        2 => {
            let j = rng.below(lines.len());
            lines.swap(i, j);
        }
        3 => {
            let others: Vec<&[u8]> = other.split(|b| *b == b'\n').collect();
            if let Some(l) = rng.pick(&others) {
                lines.insert(i, l.to_vec());
            }
        }
        _ => {
            // Replace one token of the line with a dictionary word or an edge number.
            let line = &mut lines[i];
            let cuts: Vec<usize> = line
                .iter()
                .enumerate()
                .filter(|(_, b)| b" =:/".contains(b))
                .map(|(k, _)| k + 1)
                .collect();
            let start = rng.pick(&cuts).copied().unwrap_or(0);
            let end = line[start..]
                .iter()
                .position(|b| b" =:/".contains(b))
                .map_or(line.len(), |k| start + k);
            let word = match rng.below(3) {
                0 => [
                    &b"0"[..],
                    b"-1",
                    b"65536",
                    b"4294967296",
                    b"18446744073709551616",
                ][rng.below(5)]
                .to_vec(),
                _ => rng.pick(&dict.words).cloned().unwrap_or_default(),
            };
            line.splice(start..end, word);
        }
    }
    lines.join(&b'\n')
}

fn mutate_bytes(data: &mut Vec<u8>, rng: &mut Rng, dict: &Dictionary, other: &[u8]) {
    let len = data.len();
    match rng.below(9) {
        0 if len > 0 => {
            let i = rng.below(len);
            data[i] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let i = rng.below(len);
            data[i] = [0, 0xFF, 0x7F, 0x80, 1, b'\n', b'"', b'\\'][rng.below(8)];
        }
        2 if len > 0 => {
            let i = rng.below(len);
            let n = rng.below(len - i).min(64) + 1;
            data.drain(i..(i + n).min(len));
        }
        3 => {
            let i = rng.below(len + 1);
            let n = 1 + rng.below(16);
            let bytes: Vec<u8> = (0..n).map(|_| rng.bits() as u8).collect();
            data.splice(i..i, bytes);
        }
        4 if len > 0 => {
            let (a, b) = (rng.below(len), rng.below(len));
            let (a, b) = (a.min(b), a.max(b) + 1);
            let chunk = data[a..b.min(len)].to_vec();
            let at = rng.below(len + 1);
            data.splice(at..at, chunk);
        }
        5 if !other.is_empty() => {
            // Splice: our head, the other input's tail.
            let cut = rng.below(len + 1);
            let from = rng.below(other.len());
            data.truncate(cut);
            data.extend_from_slice(&other[from..]);
        }
        6 if !dict.words.is_empty() => {
            let i = rng.below(len + 1);
            let w = dict.words[rng.below(dict.words.len())].clone();
            data.splice(i..i, w);
        }
        7 if len > 1 => {
            // A 16- or 32-bit field set to an edge value (lengths, counts, ids).
            let i = rng.below(len - 1);
            let v: u32 = [0, 1, 0xFF, 0xFFFF, 0x7FFF_FFFF, 0xFFFF_FFFF][rng.below(6)];
            let n = if rng.one_in(2) { 2 } else { 4 }.min(len - i);
            data[i..i + n].copy_from_slice(&v.to_be_bytes()[4 - n..]);
        }
        _ if len > 0 => data.truncate(rng.below(len)),
        _ => data.push(rng.bits() as u8),
    }
}

/// One mutant of `input` (stacked mutations), `other` a second corpus entry to splice from.
pub fn mutate(
    shape: Shape,
    input: &[u8],
    other: &[u8],
    rng: &mut Rng,
    dict: &Dictionary,
) -> Vec<u8> {
    let mut out = input.to_vec();
    let stack = if rng.one_in(2) { 1 } else { 2 + rng.below(3) };
    for _ in 0..stack {
        let structured = !rng.one_in(4);
        out = match shape {
            Shape::Json | Shape::HeadJson if structured => {
                let (head, body) = split_head(shape, &out);
                match serde_json::from_slice::<Value>(body) {
                    Ok(mut v) => {
                        mutate_value(&mut v, rng, dict, 0);
                        let mut o = head.to_vec();
                        o.extend(serde_json::to_vec(&v).unwrap_or_default());
                        o
                    }
                    Err(_) => {
                        let mut o = out.clone();
                        mutate_bytes(&mut o, rng, dict, other);
                        o
                    }
                }
            }
            Shape::Lines | Shape::HeadJson if structured && rng.one_in(2) => {
                mutate_lines(&out, rng, dict, other)
            }
            _ => {
                let mut o = out.clone();
                mutate_bytes(&mut o, rng, dict, other);
                o
            }
        };
        if out.len() > 1 << 20 {
            out.truncate(1 << 20);
        }
    }
    out
}
