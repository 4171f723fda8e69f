//! Price classes: the one thing a developer tells Tariff about an invocation.
//!
//! A class is a name and a price per CPU-second. Because the price is money, a class means the
//! same thing across tenants, and every scheduling decision (queue order, placement room,
//! machine priority, swap victims) is made from it. Classes are fixed per cluster and ordered
//! from the most to the least expensive; a [`ClassId`] is a position in that order, so
//! `ClassId(0)` is always the top class.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The classes a cluster starts with when none are configured: two latency-sensitive classes
/// for page views and API handlers, one for ordinary work and one for batch jobs. Prices are in
/// micro-cents per CPU-second.
pub const DEFAULT_CLASSES: &str = "critical=2.0,high=1.5,standard=1.0,batch=0.5";

/// At most this many classes: real-time priorities and per-class streams are allotted per
/// class, and more than a handful of price points would only confuse buyers.
pub const MAX_CLASSES: usize = 16;

/// Position of a class in its [`PriceClasses`] table; 0 is the most expensive class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ClassId(pub u8);

impl ClassId {
    /// The index of this class in its table.
    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

/// One named price class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PriceClass {
    /// The name clients use, e.g. `critical`.
    pub name: String,
    /// Price in micro-cents per CPU-second; higher buys priority.
    pub price: f64,
}

/// Errors in a class table or a class name.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ClassError {
    /// A class entry is not of the form `name=price`.
    #[error("price class entry `{0}` is not of the form name=price")]
    Malformed(String),
    /// A price is not a positive number.
    #[error("price of class `{name}` must be a positive number, got `{value}`")]
    BadPrice {
        /// The class whose price is wrong.
        name: String,
        /// What was given.
        value: String,
    },
    /// Two classes share a name.
    #[error("price class `{0}` is defined twice")]
    Duplicate(String),
    /// The table is empty or too long.
    #[error("a cluster needs between 1 and {MAX_CLASSES} price classes, got {0}")]
    Count(usize),
    /// A name that is not in the table.
    #[error("unknown price class `{name}` (known: {known})")]
    Unknown {
        /// The name asked for.
        name: String,
        /// The known names, comma separated.
        known: String,
    },
}

/// The cluster's table of price classes, most expensive first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PriceClasses {
    classes: Vec<PriceClass>,
}

impl PriceClasses {
    /// Builds a table, sorting classes from the highest price to the lowest so that
    /// `ClassId(0)` is the top class whatever order they were given in.
    pub fn new(mut classes: Vec<PriceClass>) -> Result<Self, ClassError> {
        if classes.is_empty() || classes.len() > MAX_CLASSES {
            return Err(ClassError::Count(classes.len()));
        }
        for (i, class) in classes.iter().enumerate() {
            if !(class.price.is_finite() && class.price > 0.0) {
                return Err(ClassError::BadPrice {
                    name: class.name.clone(),
                    value: class.price.to_string(),
                });
            }
            if classes[..i].iter().any(|c| c.name == class.name) {
                return Err(ClassError::Duplicate(class.name.clone()));
            }
        }
        classes.sort_by(|a, b| b.price.total_cmp(&a.price));
        Ok(Self { classes })
    }

    /// Number of classes.
    pub fn len(&self) -> usize {
        self.classes.len()
    }

    /// Always false: a table has at least one class.
    pub fn is_empty(&self) -> bool {
        self.classes.is_empty()
    }

    /// The class at `id`.
    pub fn get(&self, id: ClassId) -> &PriceClass {
        &self.classes[id.index()]
    }

    /// Price of the class at `id`.
    pub fn price(&self, id: ClassId) -> f64 {
        self.classes[id.index()].price
    }

    /// Looks a class up by name, with an error that lists the known names.
    pub fn resolve(&self, name: &str) -> Result<ClassId, ClassError> {
        self.classes
            .iter()
            .position(|c| c.name == name)
            .map(|i| ClassId(i as u8))
            .ok_or_else(|| ClassError::Unknown {
                name: name.to_owned(),
                known: self.names().collect::<Vec<_>>().join(", "),
            })
    }

    /// Class names, most expensive first.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.classes.iter().map(|c| c.name.as_str())
    }

    /// All class ids, most expensive first.
    pub fn ids(&self) -> impl Iterator<Item = ClassId> {
        (0..self.classes.len()).map(|i| ClassId(i as u8))
    }

    /// The cheapest class.
    pub fn lowest(&self) -> ClassId {
        ClassId((self.classes.len() - 1) as u8)
    }

    /// The prices, most expensive first (index = class id).
    pub fn prices(&self) -> Vec<f64> {
        self.classes.iter().map(|c| c.price).collect()
    }
}

impl Default for PriceClasses {
    fn default() -> Self {
        DEFAULT_CLASSES.parse().expect("default classes are valid")
    }
}

impl FromStr for PriceClasses {
    type Err = ClassError;

    /// Parses `name=price,name=price,...`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut classes = Vec::new();
        for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (name, price) = entry
                .split_once('=')
                .ok_or_else(|| ClassError::Malformed(entry.to_owned()))?;
            let name = name.trim();
            if name.is_empty() {
                return Err(ClassError::Malformed(entry.to_owned()));
            }
            let price = price
                .trim()
                .parse::<f64>()
                .map_err(|_| ClassError::BadPrice {
                    name: name.to_owned(),
                    value: price.trim().to_owned(),
                })?;
            classes.push(PriceClass {
                name: name.to_owned(),
                price,
            });
        }
        Self::new(classes)
    }
}

impl fmt::Display for PriceClasses {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .classes
            .iter()
            .map(|c| format!("{}={}", c.name, c.price))
            .collect();
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_table_is_sorted_by_price() {
        let classes = PriceClasses::default();
        assert_eq!(
            classes.names().collect::<Vec<_>>(),
            ["critical", "high", "standard", "batch"]
        );
        assert_eq!(classes.resolve("critical"), Ok(ClassId(0)));
        assert_eq!(classes.lowest(), ClassId(3));
    }

    #[test]
    fn order_given_does_not_matter() {
        let classes: PriceClasses = "cheap=0.1, dear=9".parse().unwrap();
        assert_eq!(classes.resolve("dear"), Ok(ClassId(0)));
        assert_eq!(classes.to_string(), "dear=9,cheap=0.1");
    }

    #[test]
    fn bad_tables_are_refused_with_reasons() {
        assert!(matches!(
            "a".parse::<PriceClasses>(),
            Err(ClassError::Malformed(_))
        ));
        assert!(matches!(
            "a=-1".parse::<PriceClasses>(),
            Err(ClassError::BadPrice { .. })
        ));
        assert!(matches!(
            "a=1,a=2".parse::<PriceClasses>(),
            Err(ClassError::Duplicate(_))
        ));
        assert_eq!("".parse::<PriceClasses>(), Err(ClassError::Count(0)));
    }

    #[test]
    fn unknown_name_lists_the_known_ones() {
        let err = PriceClasses::default().resolve("gold").unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown price class `gold` (known: critical, high, standard, batch)"
        );
    }
}
