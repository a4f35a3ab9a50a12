//! Best-effort constant folding of a WHERE clause.

use sqlparser::ast::{BinaryOperator, DataType, Expr, UnaryOperator, Value};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Val<'a> {
    Null,
    Bool(bool),
    Num(f64),
    Str(&'a str),
    /// A literal we do not interpret (bit strings, hex numbers...).
    Opaque,
}

/// A constant; `literal` when it comes from a literal that the fingerprint replaces with `?`.
#[derive(Clone, Copy, Debug)]
struct Const<'a> {
    val: Val<'a>,
    literal: bool,
}

impl<'a> Const<'a> {
    fn derived(val: Val<'a>) -> Option<Self> {
        Some(Const {
            val,
            literal: false,
        })
    }
}

/// Best-effort constant folding of a WHERE clause. Every look at a literal's value goes
/// through [`Eval::open`], which records that the result depends on literals.
#[derive(Default)]
pub(super) struct Eval {
    pub(super) literal_dependent: bool,
}

impl Eval {
    const MAX_DEPTH: u32 = 64;

    pub(super) fn always_true(&mut self, e: &Expr) -> bool {
        let truth = self.eval(e, 0).map(|c| self.truth(c));
        truth == Some(Some(true))
    }

    fn open<'a>(&mut self, c: Const<'a>) -> Val<'a> {
        self.literal_dependent |= c.literal;
        c.val
    }

    /// The boolean value, `None` for NULL or a non-boolean.
    fn truth(&mut self, c: Const) -> Option<bool> {
        match self.open(c) {
            Val::Bool(b) => Some(b),
            Val::Str(s) => parse_bool(s),
            _ => None,
        }
    }

    fn logic<'a>(&mut self, c: Option<Const<'a>>) -> Option<Option<bool>> {
        c.map(|c| self.truth(c))
    }

    fn eval<'a>(&mut self, e: &'a Expr, depth: u32) -> Option<Const<'a>> {
        if depth > Self::MAX_DEPTH {
            return None;
        }
        let depth = depth + 1;
        let tri = |b: Option<bool>| Const::derived(b.map_or(Val::Null, Val::Bool));
        match e {
            Expr::Value(v) => {
                let val = match &v.value {
                    Value::Boolean(b) => return Const::derived(Val::Bool(*b)),
                    Value::Null => return Const::derived(Val::Null),
                    Value::Placeholder(_) => return None,
                    Value::Number(n, _) => n.replace('_', "").parse().map_or(Val::Opaque, Val::Num),
                    Value::SingleQuotedString(s)
                    | Value::EscapedStringLiteral(s)
                    | Value::NationalStringLiteral(s)
                    | Value::UnicodeStringLiteral(s) => Val::Str(s),
                    Value::DollarQuotedString(d) => Val::Str(&d.value),
                    _ => Val::Opaque,
                };
                Some(Const { val, literal: true })
            }
            Expr::Nested(inner) => self.eval(inner, depth),
            Expr::UnaryOp { op, expr } => {
                let c = self.eval(expr, depth)?;
                match (op, self.open(c)) {
                    (UnaryOperator::Not, _) => tri(self.truth(c).map(|b| !b)),
                    (UnaryOperator::Minus, Val::Num(n)) => Const::derived(Val::Num(-n)),
                    (UnaryOperator::Plus, Val::Num(n)) => Const::derived(Val::Num(n)),
                    _ => None,
                }
            }
            Expr::BinaryOp { left, op, right } => {
                let (l, r) = (self.eval(left, depth), self.eval(right, depth));
                match op {
                    BinaryOperator::Or => match (self.logic(l), self.logic(r)) {
                        (Some(Some(true)), _) | (_, Some(Some(true))) => tri(Some(true)),
                        (Some(Some(false)), Some(Some(false))) => tri(Some(false)),
                        (Some(_), Some(_)) => tri(None),
                        _ => None,
                    },
                    BinaryOperator::And => match (self.logic(l), self.logic(r)) {
                        (Some(Some(false)), _) | (_, Some(Some(false))) => tri(Some(false)),
                        (Some(Some(true)), Some(Some(true))) => tri(Some(true)),
                        (Some(_), Some(_)) => tri(None),
                        _ => None,
                    },
                    _ => {
                        // Only a comparison of two constants looks at literal values.
                        let (Some(l), Some(r)) = (l, r) else {
                            return None;
                        };
                        let (l, r) = (self.open(l), self.open(r));
                        compare(op, l, r).map(|val| Const {
                            val,
                            literal: false,
                        })
                    }
                }
            }
            Expr::IsNull(inner) | Expr::IsNotNull(inner) => {
                let c = self.eval(inner, depth)?;
                let is_null = self.open(c) == Val::Null;
                tri(Some(is_null == matches!(e, Expr::IsNull(_))))
            }
            Expr::IsTrue(inner)
            | Expr::IsNotTrue(inner)
            | Expr::IsFalse(inner)
            | Expr::IsNotFalse(inner) => {
                let c = self.eval(inner, depth)?;
                let truth = self.truth(c);
                tri(Some(match e {
                    Expr::IsTrue(_) => truth == Some(true),
                    Expr::IsNotTrue(_) => truth != Some(true),
                    Expr::IsFalse(_) => truth == Some(false),
                    _ => truth != Some(false),
                }))
            }
            Expr::Cast {
                expr,
                data_type: DataType::Bool | DataType::Boolean,
                ..
            } => {
                let c = self.eval(expr, depth)?;
                match self.open(c) {
                    Val::Null => tri(None),
                    _ => self.truth(c).and_then(|b| tri(Some(b))),
                }
            }
            _ => None,
        }
    }
}

fn compare(op: &BinaryOperator, l: Val, r: Val) -> Option<Val<'static>> {
    use std::cmp::Ordering;
    let number = |s: &str| s.trim().parse::<f64>().ok();
    let equality_only = matches!(op, BinaryOperator::Eq | BinaryOperator::NotEq);
    let ordering: Ordering = match (l, r) {
        (Val::Null, _) | (_, Val::Null) => return Some(Val::Null),
        (Val::Num(a), Val::Num(b)) => a.partial_cmp(&b)?,
        (Val::Num(a), Val::Str(s)) => a.partial_cmp(&number(s)?)?,
        (Val::Str(s), Val::Num(b)) => number(s)?.partial_cmp(&b)?,
        // Ordering of strings depends on collation; equality does not.
        (Val::Str(a), Val::Str(b)) if equality_only => a.cmp(b),
        (Val::Bool(a), Val::Bool(b)) => a.cmp(&b),
        (Val::Bool(a), Val::Str(s)) | (Val::Str(s), Val::Bool(a)) if equality_only => {
            a.cmp(&parse_bool(s)?)
        }
        _ => return None,
    };
    let result = match op {
        BinaryOperator::Eq => ordering.is_eq(),
        BinaryOperator::NotEq => ordering.is_ne(),
        BinaryOperator::Lt => ordering.is_lt(),
        BinaryOperator::LtEq => ordering.is_le(),
        BinaryOperator::Gt => ordering.is_gt(),
        BinaryOperator::GtEq => ordering.is_ge(),
        _ => return None,
    };
    Some(Val::Bool(result))
}

/// PostgreSQL's `boolin`: prefixes of true/false/yes/no, on/off, 1/0.
fn parse_bool(s: &str) -> Option<bool> {
    let s = s.trim().to_ascii_lowercase();
    let prefix_of = |word: &str, min: usize| s.len() >= min && word.starts_with(s.as_str());
    if prefix_of("true", 1) || prefix_of("yes", 1) || s == "on" || s == "1" {
        Some(true)
    } else if prefix_of("false", 1) || prefix_of("no", 1) || prefix_of("off", 2) || s == "0" {
        Some(false)
    } else {
        None
    }
}
