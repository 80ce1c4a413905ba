//! Validated value types. Every constructor is a `TryFrom` that refuses bad input, so a value
//! that exists inside the domain is valid ("parse, don't validate").

use std::fmt;

use thiserror::Error;
use uuid::Uuid;

/// Why a raw value was refused. The HTTP layer attaches the field path.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InvalidValue {
    #[error("must match ^[A-Za-z0-9_-]{{1,64}}$")]
    BadIdentifier,
    #[error("must be a UUID")]
    BadUuid,
    #[error("must be at least 1")]
    QuantityTooSmall,
    #[error("must be at most {max}")]
    QuantityTooLarge { max: u32 },
    #[error("must not be negative")]
    NegativeAmount,
    #[error("must be a three-letter upper-case ISO 4217 code")]
    BadCurrency,
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {max} characters")]
    TooLong { max: usize },
}

/// Identifiers chosen by callers (customer ids, SKUs) share one pattern: `^[A-Za-z0-9_-]{1,64}$`.
fn parse_identifier(raw: &str) -> Result<String, InvalidValue> {
    let ok = (1..=64).contains(&raw.len())
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(raw.to_owned())
    } else {
        Err(InvalidValue::BadIdentifier)
    }
}

macro_rules! identifier {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<&str> for $name {
            type Error = InvalidValue;
            fn try_from(raw: &str) -> Result<Self, Self::Error> {
                parse_identifier(raw).map(Self)
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidValue;
            fn try_from(raw: String) -> Result<Self, Self::Error> {
                Self::try_from(raw.as_str())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

identifier!(
    /// A customer's id, chosen by the caller who registers it.
    CustomerId
);
identifier!(
    /// An inventory item's id (stock keeping unit).
    Sku
);

/// An order's id: a UUID (v7, made by the server, so ids sort by creation time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OrderId(Uuid);

impl OrderId {
    pub fn from_uuid(id: Uuid) -> Self {
        Self(id)
    }
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl TryFrom<&str> for OrderId {
    type Error = InvalidValue;
    fn try_from(raw: &str) -> Result<Self, Self::Error> {
        Uuid::parse_str(raw)
            .map(Self)
            .map_err(|_| InvalidValue::BadUuid)
    }
}

impl fmt::Display for OrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A number of units, at least 1. The upper bound keeps line totals far from overflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Quantity(u32);

impl Quantity {
    pub const MAX: u32 = 1_000_000;
    pub fn get(self) -> u32 {
        self.0
    }
}

impl TryFrom<i64> for Quantity {
    type Error = InvalidValue;
    fn try_from(raw: i64) -> Result<Self, Self::Error> {
        if raw < 1 {
            Err(InvalidValue::QuantityTooSmall)
        } else if raw > i64::from(Self::MAX) {
            Err(InvalidValue::QuantityTooLarge { max: Self::MAX })
        } else {
            u32::try_from(raw)
                .map(Self)
                .map_err(|_| InvalidValue::QuantityTooLarge { max: Self::MAX })
        }
    }
}

/// An ISO 4217 currency code such as `USD`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Currency([u8; 3]);

impl Currency {
    pub fn as_str(&self) -> &str {
        // Only ASCII upper-case letters are ever stored, so this cannot fail.
        std::str::from_utf8(&self.0).unwrap_or("???")
    }
}

impl TryFrom<&str> for Currency {
    type Error = InvalidValue;
    fn try_from(raw: &str) -> Result<Self, Self::Error> {
        match raw.as_bytes() {
            [a, b, c] if [a, b, c].iter().all(|x| x.is_ascii_uppercase()) => Ok(Self([*a, *b, *c])),
            _ => Err(InvalidValue::BadCurrency),
        }
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An amount of money in integer minor units (cents), never negative, never a float.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Money {
    amount_minor: i64,
    currency: Currency,
}

/// Arithmetic on money that cannot be done: different currencies or an amount out of range.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MoneyError {
    #[error("cannot combine {left} with {right}")]
    CurrencyMismatch { left: Currency, right: Currency },
    #[error("amount out of range")]
    Overflow,
}

impl Money {
    pub fn new(amount_minor: i64, currency: Currency) -> Result<Self, InvalidValue> {
        if amount_minor < 0 {
            return Err(InvalidValue::NegativeAmount);
        }
        Ok(Self {
            amount_minor,
            currency,
        })
    }

    pub fn zero(currency: Currency) -> Self {
        Self {
            amount_minor: 0,
            currency,
        }
    }

    pub fn amount_minor(&self) -> i64 {
        self.amount_minor
    }

    pub fn currency(&self) -> Currency {
        self.currency
    }

    pub fn checked_add(self, other: Money) -> Result<Money, MoneyError> {
        self.same_currency(other)?;
        let amount_minor = self
            .amount_minor
            .checked_add(other.amount_minor)
            .ok_or(MoneyError::Overflow)?;
        Ok(Money {
            amount_minor,
            ..self
        })
    }

    /// `self - other`, floored at zero (used for "available" figures).
    pub fn saturating_sub(self, other: Money) -> Result<Money, MoneyError> {
        self.same_currency(other)?;
        Ok(Money {
            amount_minor: (self.amount_minor - other.amount_minor).max(0),
            ..self
        })
    }

    pub fn checked_mul(self, quantity: Quantity) -> Result<Money, MoneyError> {
        let amount_minor = self
            .amount_minor
            .checked_mul(i64::from(quantity.get()))
            .ok_or(MoneyError::Overflow)?;
        Ok(Money {
            amount_minor,
            ..self
        })
    }

    fn same_currency(&self, other: Money) -> Result<(), MoneyError> {
        if self.currency == other.currency {
            Ok(())
        } else {
            Err(MoneyError::CurrencyMismatch {
                left: self.currency,
                right: other.currency,
            })
        }
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.amount_minor, self.currency)
    }
}

/// Free text with a length bound (names, reasons). Trimmed; never empty.
fn parse_text(raw: &str, max: usize) -> Result<String, InvalidValue> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        Err(InvalidValue::Empty)
    } else if trimmed.chars().count() > max {
        Err(InvalidValue::TooLong { max })
    } else {
        Ok(trimmed.to_owned())
    }
}

macro_rules! bounded_text {
    ($(#[$doc:meta])* $name:ident, $max:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub struct $name(String);

        impl $name {
            pub const MAX_CHARS: usize = $max;
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<&str> for $name {
            type Error = InvalidValue;
            fn try_from(raw: &str) -> Result<Self, Self::Error> {
                parse_text(raw, $max).map(Self)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

bounded_text!(
    /// A customer's display name.
    CustomerName,
    200
);
bounded_text!(
    /// Why a caller cancels an order.
    CancellationReason,
    500
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_follow_the_documented_pattern() {
        assert!(CustomerId::try_from("c-1_A").is_ok());
        assert!(Sku::try_from("x".repeat(64).as_str()).is_ok());
        for bad in ["", "has space", "ünï", "a/b", &"x".repeat(65)] {
            assert_eq!(
                Sku::try_from(bad),
                Err(InvalidValue::BadIdentifier),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn quantity_is_at_least_one_and_bounded() {
        assert_eq!(Quantity::try_from(0), Err(InvalidValue::QuantityTooSmall));
        assert_eq!(Quantity::try_from(-3), Err(InvalidValue::QuantityTooSmall));
        assert_eq!(Quantity::try_from(1).map(Quantity::get), Ok(1));
        assert!(Quantity::try_from(i64::from(Quantity::MAX) + 1).is_err());
    }

    #[test]
    fn money_refuses_negative_amounts_and_bad_currencies() {
        let usd = Currency::try_from("USD").unwrap();
        assert_eq!(Money::new(-1, usd), Err(InvalidValue::NegativeAmount));
        for bad in ["usd", "US", "USDX", "U$D", ""] {
            assert_eq!(
                Currency::try_from(bad),
                Err(InvalidValue::BadCurrency),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn money_arithmetic_refuses_mixed_currencies_and_overflow() {
        let usd = Currency::try_from("USD").unwrap();
        let eur = Currency::try_from("EUR").unwrap();
        let a = Money::new(100, usd).unwrap();
        assert_eq!(a.checked_add(a).unwrap().amount_minor(), 200);
        assert!(matches!(
            a.checked_add(Money::new(1, eur).unwrap()),
            Err(MoneyError::CurrencyMismatch { .. })
        ));
        let big = Money::new(i64::MAX, usd).unwrap();
        assert_eq!(big.checked_add(a), Err(MoneyError::Overflow));
        assert_eq!(
            big.checked_mul(Quantity::try_from(2).unwrap()),
            Err(MoneyError::Overflow)
        );
        assert_eq!(a.saturating_sub(big).unwrap().amount_minor(), 0);
    }

    #[test]
    fn text_is_trimmed_non_empty_and_bounded() {
        assert_eq!(CustomerName::try_from("  Ada ").unwrap().as_str(), "Ada");
        assert_eq!(CustomerName::try_from("   "), Err(InvalidValue::Empty));
        assert!(CancellationReason::try_from("x".repeat(501).as_str()).is_err());
    }
}
