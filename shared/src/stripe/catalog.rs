//! The products Libero sells: the ONE place they live.
//!
//! Each product says what a purchase grants (tokens, bonus, or the plan) and what it
//! costs (amount, currency, billing interval). `libero stripe sync` (cli/) makes Stripe
//! match this list: a product tagged `metadata[libero_product] = key`, and a price with
//! the product's `lookup_key`. The price ids it (and the webhook, as prices change) stores
//! in `stripe_catalog_prices` are what checkout sells
//! (`migrations/20250106300000_stripe_catalog.sql`); a `stripe_price_*` variable, when
//! set, overrides the stored price. The client only ever names a product key (or a price
//! id that maps to one), so it can never choose how many tokens it gets.

use serde::Serialize;
use serde_json::{json, Value};

use crate::db::{self, DbError, SqlParam};
use crate::settings::{self, Setting};
use crate::Platform;

/// The product metadata key that marks a Stripe product (and the prices the sync makes)
/// as a catalog product's.
pub const METADATA_KEY: &str = "libero_product";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProductKind {
    /// A recurring subscription: plan `mystic` while it is active or trialing.
    Subscription,
    /// A one-time token package: `tokens + bonus` credited once it is paid.
    Tokens,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Product {
    pub key: &'static str,
    pub name: &'static str,
    pub kind: ProductKind,
    pub tokens: i32,
    pub bonus: i32,
    /// The price `libero stripe sync` creates, in the currency's smallest unit.
    pub unit_amount: i64,
    /// Lowercase ISO 4217, as Stripe writes it.
    pub currency: &'static str,
    /// The billing interval of a subscription (`month`, `year`, ...); every
    /// `interval_count` is 1.
    pub interval: Option<&'static str>,
    /// The Stripe lookup key of the price it is sold at (unique in a Stripe account).
    pub lookup_key: &'static str,
    /// The setting that may override the stored price id.
    pub price_override: Setting,
}

pub const PRODUCTS: &[Product] = &[
    Product {
        key: "mystic-subscription",
        name: "Mystic",
        kind: ProductKind::Subscription,
        tokens: 0,
        bonus: 0,
        unit_amount: 999,
        currency: "usd",
        interval: Some("month"),
        lookup_key: "libero_mystic_subscription",
        price_override: settings::STRIPE_PRICE_MYSTIC_SUBSCRIPTION,
    },
    Product {
        key: "tokens-small",
        name: "100 tokens",
        kind: ProductKind::Tokens,
        tokens: 100,
        bonus: 10,
        unit_amount: 499,
        currency: "usd",
        interval: None,
        lookup_key: "libero_tokens_small",
        price_override: settings::STRIPE_PRICE_TOKENS_SMALL,
    },
    Product {
        key: "tokens-medium",
        name: "250 tokens",
        kind: ProductKind::Tokens,
        tokens: 250,
        bonus: 50,
        unit_amount: 999,
        currency: "usd",
        interval: None,
        lookup_key: "libero_tokens_medium",
        price_override: settings::STRIPE_PRICE_TOKENS_MEDIUM,
    },
    Product {
        key: "tokens-large",
        name: "500 tokens",
        kind: ProductKind::Tokens,
        tokens: 500,
        bonus: 150,
        unit_amount: 1999,
        currency: "usd",
        interval: None,
        lookup_key: "libero_tokens_large",
        price_override: settings::STRIPE_PRICE_TOKENS_LARGE,
    },
];

impl Product {
    /// Tokens a paid order of this product credits.
    pub fn credited_tokens(&self) -> i32 {
        self.tokens + self.bonus
    }

    /// The Checkout Session `mode` this product is sold in.
    pub fn checkout_mode(&self) -> &'static str {
        match self.kind {
            ProductKind::Subscription => "subscription",
            ProductKind::Tokens => "payment",
        }
    }

    /// What the Stripe product says under it (the portal and receipts show it).
    pub fn description(&self) -> String {
        match self.kind {
            ProductKind::Subscription => "The Mystic plan: premium voices and higher AI limits.".to_string(),
            ProductKind::Tokens if self.bonus > 0 => format!("{} tokens + {} bonus tokens", self.tokens, self.bonus),
            ProductKind::Tokens => format!("{} tokens", self.tokens),
        }
    }
}

pub fn find(key: &str) -> Option<&'static Product> {
    PRODUCTS.iter().find(|p| p.key == key)
}

pub fn find_by_lookup_key(lookup_key: &str) -> Option<&'static Product> {
    PRODUCTS.iter().find(|p| p.lookup_key == lookup_key)
}

/// The subscriptions a customer may switch between in the Billing Portal: all of the
/// catalog's, when it has more than one (with one there is nothing to switch to).
pub fn portal_switchable() -> Vec<&'static Product> {
    let subscriptions: Vec<&'static Product> =
        PRODUCTS.iter().filter(|p| p.kind == ProductKind::Subscription).collect();
    if subscriptions.len() > 1 {
        subscriptions
    } else {
        Vec::new()
    }
}

/// A price a product is sold at.
#[derive(Debug, Clone, PartialEq)]
pub struct Price {
    pub id: String,
    /// Unknown for an override the database has not stored (and tiered prices).
    pub unit_amount: Option<i64>,
    pub currency: Option<String>,
    pub interval: Option<String>,
    pub interval_count: Option<i64>,
}

impl Price {
    fn from_stored(value: &Value) -> Option<Price> {
        let id = value["price_id"].as_str().filter(|id| super::is_object_id(id))?;
        Some(Price {
            id: id.to_string(),
            unit_amount: value["unit_amount"].as_i64(),
            currency: value["currency"].as_str().map(str::to_string),
            interval: value["interval"].as_str().map(str::to_string),
            interval_count: value["interval_count"].as_i64(),
        })
    }
}

/// What each product is sold at now: the `stripe_price_*` override when set, else the
/// stored price (`stripe_catalog()` in the catalog migration); and the Billing Portal
/// configuration the sync made.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Prices {
    prices: Vec<(&'static Product, Price)>,
    pub portal_configuration: Option<String>,
}

impl Prices {
    /// The override ids that are set, as the jsonb array `stripe_catalog($1)` takes.
    pub fn overrides_param(platform: &dyn Platform) -> SqlParam {
        let ids: Vec<String> = PRODUCTS.iter().filter_map(|p| p.price_override.value(platform)).collect();
        SqlParam::Jsonb(Value::from(ids).to_string().into_bytes())
    }

    /// From `stripe_catalog()`'s answer (`Value::Null`: nothing stored, or no database).
    pub fn from_stored(platform: &dyn Platform, stored: &Value) -> Prices {
        let prices = PRODUCTS
            .iter()
            .filter_map(|product| {
                let price = match product.price_override.value(platform) {
                    Some(id) => Price::from_stored(&stored["overrides"][&id]).filter(|p| p.id == id).unwrap_or(Price {
                        id,
                        unit_amount: None,
                        currency: None,
                        interval: None,
                        interval_count: None,
                    }),
                    None => Price::from_stored(&stored["prices"][product.key])?,
                };
                Some((product, price))
            })
            .collect();
        let portal_configuration =
            stored["portal_configuration"].as_str().filter(|id| super::is_object_id(id)).map(str::to_string);
        Prices { prices, portal_configuration }
    }

    /// One statement: `select public.stripe_catalog($1::jsonb)`.
    pub fn load(platform: &dyn Platform) -> Result<Prices, DbError> {
        let stored =
            db::query_json(platform, "select public.stripe_catalog($1::jsonb)", &[Self::overrides_param(platform)])?;
        Ok(Self::from_stored(platform, &stored))
    }

    /// The price `product` is sold at; `None` while it has none (not synced, archived).
    pub fn price(&self, product: &Product) -> Option<&Price> {
        self.prices.iter().find(|(p, _)| p.key == product.key).map(|(_, price)| price)
    }

    /// The product sold at `price_id` (the Supabase Stripe template sends price ids);
    /// `None` for any price that is not one of the catalog's now.
    pub fn product_of(&self, price_id: &str) -> Option<&'static Product> {
        if price_id.is_empty() {
            return None;
        }
        self.prices.iter().find(|(_, price)| price.id == price_id).map(|(product, _)| *product)
    }

    /// How the client sees a product (`GET /stripe-checkout/products`): the amount and
    /// currency of the price it is sold at when known, else the catalog's own.
    pub fn listing(&self, product: &Product) -> Value {
        let price = self.price(product);
        let known = price.filter(|p| p.unit_amount.is_some() && p.currency.is_some());
        let label = match known {
            Some(p) => price_label(
                p.unit_amount.unwrap_or_default(),
                p.currency.as_deref().unwrap_or_default(),
                p.interval.as_deref(),
                p.interval_count.unwrap_or(1),
            ),
            None => price_label(product.unit_amount, product.currency, product.interval, 1),
        };
        json!({
            "product": product.key,
            "name": product.name,
            "kind": product.kind,
            "tokens": product.tokens,
            "bonus": product.bonus,
            "total_tokens": product.credited_tokens(),
            "price_label": label,
            "amount": known.and_then(|p| p.unit_amount),
            "currency": known.and_then(|p| p.currency.clone()),
            "interval": known.and_then(|p| p.interval.clone()),
            "available": price.is_some(),
        })
    }
}

/// Currencies Stripe counts in whole units, and those with three decimals.
const ZERO_DECIMAL: [&str; 16] =
    ["bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv", "xaf", "xof", "xpf"];
const THREE_DECIMAL: [&str; 5] = ["bhd", "jod", "kwd", "omr", "tnd"];

/// `$4.99`, `€9.99 / month`, `1200 JPY`, `12.50 CHF / 3 months`.
pub fn price_label(unit_amount: i64, currency: &str, interval: Option<&str>, interval_count: i64) -> String {
    let currency = currency.to_ascii_lowercase();
    let decimals = if ZERO_DECIMAL.contains(&currency.as_str()) {
        0
    } else if THREE_DECIMAL.contains(&currency.as_str()) {
        3
    } else {
        2
    };
    let scale = 10_i64.pow(decimals);
    let number = if decimals == 0 {
        unit_amount.to_string()
    } else {
        format!("{}.{:0width$}", unit_amount / scale, unit_amount % scale, width = decimals as usize)
    };
    let amount = match currency.as_str() {
        "usd" => format!("${number}"),
        "eur" => format!("€{number}"),
        "gbp" => format!("£{number}"),
        other => format!("{number} {}", other.to_ascii_uppercase()),
    };
    match interval {
        None => amount,
        Some(interval) if interval_count <= 1 => format!("{amount} / {interval}"),
        Some(interval) => format!("{amount} / {interval_count} {interval}s"),
    }
}

/// A Stripe price, as the row `stripe_catalog_put_price` stores (see the catalog
/// migration). `product` is the price's product object (the price's own `product` when it
/// was expanded); `None` when the price belongs to no catalog product and carries no
/// catalog lookup key either (the row then only updates a price stored before). Shared by
/// the webhook and `libero stripe sync`, so both store the same thing.
pub fn price_row(price: &Value, product: Option<&Value>, read_at_ms: i64, product_read_at_ms: i64) -> Option<Value> {
    let id = price["id"].as_str().filter(|id| super::is_object_id(id))?;
    let product = product.or_else(|| price["product"].is_object().then_some(&price["product"]));
    let product_id = price["product"].as_str().or_else(|| product.and_then(|p| p["id"].as_str()))?;
    let lookup_key = price["lookup_key"].as_str();
    // The lookup key names the product it is sold for; else the product's metadata.
    let by_lookup = lookup_key.and_then(find_by_lookup_key);
    let by_metadata = product.and_then(|p| p["metadata"][METADATA_KEY].as_str()).and_then(find);
    let catalog_product = by_lookup.or(by_metadata);
    let recurring = &price["recurring"];
    let mut row = json!({
        "price_id": id,
        "product_key": catalog_product.map(|p| p.key),
        "product_id": product_id,
        "lookup_key": lookup_key,
        "catalog_lookup": by_lookup.is_some(),
        "unit_amount": price["unit_amount"].as_i64(),
        "currency": price["currency"].as_str().map(str::to_ascii_lowercase),
        "interval": recurring["interval"].as_str(),
        "interval_count": recurring["interval_count"].as_i64(),
        "active": price["active"].as_bool().unwrap_or(false),
        "created": price["created"].as_i64(),
        "deleted": price["deleted"].as_bool().unwrap_or(false),
        "read_at_ms": read_at_ms,
        "product_read_at_ms": product_read_at_ms,
    });
    if let Some(product) = product {
        // A deleted product (`{"deleted": true}`) is as good as an archived one.
        let active = product["active"].as_bool().unwrap_or(false) && product["deleted"].as_bool() != Some(true);
        row["product_active"] = Value::Bool(active);
    }
    Some(row)
}

/// The row for a price Stripe no longer has.
pub fn deleted_price_row(price_id: &str, read_at_ms: i64) -> Value {
    json!({ "price_id": price_id, "deleted": true, "read_at_ms": read_at_ms })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes::FakePlatform;

    #[test]
    fn stripe_catalog_matches_the_design() {
        let amounts: Vec<(&str, i32, i64)> =
            PRODUCTS.iter().map(|p| (p.key, p.credited_tokens(), p.unit_amount)).collect();
        assert_eq!(
            amounts,
            [
                ("mystic-subscription", 0, 999),
                ("tokens-small", 110, 499),
                ("tokens-medium", 300, 999),
                ("tokens-large", 650, 1999)
            ]
        );
        assert_eq!(find("tokens-medium").unwrap().checkout_mode(), "payment");
        assert_eq!(find("mystic-subscription").unwrap().checkout_mode(), "subscription");
        assert!(find("tokens-huge").is_none());
        // Lookup keys are unique, and only subscriptions recur.
        let keys: std::collections::HashSet<&str> = PRODUCTS.iter().map(|p| p.lookup_key).collect();
        assert_eq!(keys.len(), PRODUCTS.len());
        assert!(PRODUCTS.iter().all(|p| p.interval.is_some() == (p.kind == ProductKind::Subscription)));
        // One subscription: nothing to switch to in the portal.
        assert!(portal_switchable().is_empty());
    }

    #[test]
    fn stripe_labels_follow_the_currency() {
        assert_eq!(price_label(499, "usd", None, 1), "$4.99");
        assert_eq!(price_label(999, "USD", Some("month"), 1), "$9.99 / month");
        assert_eq!(price_label(1250, "chf", Some("month"), 3), "12.50 CHF / 3 months");
        assert_eq!(price_label(1200, "jpy", None, 1), "1200 JPY");
        assert_eq!(price_label(5, "eur", None, 1), "€0.05");
        assert_eq!(price_label(1500, "kwd", Some("year"), 1), "1.500 KWD / year");
    }

    #[test]
    fn stripe_prices_come_from_overrides_then_the_database() {
        let stored = json!({
            "prices": {
                "tokens-small": {"price_id": "price_small_db", "unit_amount": 549, "currency": "eur"},
                "mystic-subscription": {"price_id": "price_m", "unit_amount": 1299, "currency": "usd", "interval": "month", "interval_count": 1},
            },
            "overrides": {"price_large_var": {"price_id": "price_large_var", "unit_amount": 2499, "currency": "usd"}},
            "portal_configuration": "bpc_1",
        });
        let platform = FakePlatform::with_vars(&[
            ("stripe_price_tokens_large", "price_large_var"),
            ("stripe_price_tokens_medium", "price_medium_var"),
        ]);
        let prices = Prices::from_stored(&platform, &stored);
        let listing = |key: &str| prices.listing(find(key).unwrap());
        assert_eq!(prices.price(find("tokens-small").unwrap()).unwrap().id, "price_small_db");
        assert_eq!(listing("tokens-small")["price_label"], "€5.49");
        assert_eq!(
            (listing("tokens-small")["amount"].as_i64(), listing("tokens-small")["available"].as_bool()),
            (Some(549), Some(true))
        );
        assert_eq!(listing("mystic-subscription")["price_label"], "$12.99 / month");
        assert_eq!(listing("mystic-subscription")["interval"], "month");
        // An override wins; its amount is shown when the database knows the price.
        assert_eq!(listing("tokens-large")["amount"], 2499);
        assert_eq!(prices.product_of("price_large_var").unwrap().key, "tokens-large");
        // An override the database does not know: sold, amount unknown, the catalog's label.
        assert_eq!(
            (listing("tokens-medium")["available"].as_bool(), listing("tokens-medium")["amount"].is_null()),
            (Some(true), true)
        );
        assert_eq!(listing("tokens-medium")["price_label"], "$9.99");
        assert_eq!(prices.product_of("price_medium_var").unwrap().key, "tokens-medium");
        assert!(prices.product_of("price_small_other").is_none());
        assert!(prices.product_of("").is_none());
        assert_eq!(prices.portal_configuration.as_deref(), Some("bpc_1"));

        // Nothing stored and no variables: nothing for sale, every product still listed.
        let empty = Prices::from_stored(&FakePlatform::with_vars(&[]), &Value::Null);
        for product in PRODUCTS {
            assert_eq!(empty.listing(product)["available"], false);
            assert!(empty.price(product).is_none());
        }
    }

    #[test]
    fn stripe_price_rows_name_the_catalog_product() {
        let product = json!({"id": "prod_1", "active": true, "metadata": {"libero_product": "tokens-small"}});
        let price = json!({"id": "price_1", "object": "price", "product": product, "lookup_key": "libero_tokens_small",
            "unit_amount": 499, "currency": "USD", "active": true, "created": 1_700_000_000, "recurring": null});
        let row = price_row(&price, None, 10, 11).unwrap();
        assert_eq!((row["product_key"].as_str(), row["catalog_lookup"].as_bool()), (Some("tokens-small"), Some(true)));
        assert_eq!((row["currency"].as_str(), row["product_active"].as_bool()), (Some("usd"), Some(true)));
        // The lookup key moved away: still the product's (metadata), no longer a candidate.
        let mut old = price.clone();
        old["lookup_key"] = Value::Null;
        let row = price_row(&old, None, 10, 10).unwrap();
        assert_eq!((row["product_key"].as_str(), row["catalog_lookup"].as_bool()), (Some("tokens-small"), Some(false)));
        // A Dashboard price given the lookup key on another product: the lookup key decides.
        let mut elsewhere = price.clone();
        elsewhere["product"] = json!({"id": "prod_2", "active": true, "metadata": {}});
        elsewhere["lookup_key"] = json!("libero_tokens_large");
        assert_eq!(price_row(&elsewhere, None, 1, 1).unwrap()["product_key"], "tokens-large");
        // Not ours at all.
        elsewhere["lookup_key"] = Value::Null;
        assert!(price_row(&elsewhere, None, 1, 1).unwrap()["product_key"].is_null());
        // An archived product is not for sale.
        let mut archived = price;
        archived["product"]["active"] = json!(false);
        assert_eq!(price_row(&archived, None, 1, 1).unwrap()["product_active"], false);
        assert!(price_row(&json!({"id": "price_../x"}), None, 1, 1).is_none());
    }
}
