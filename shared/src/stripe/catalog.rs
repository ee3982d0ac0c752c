//! The products Libero sells: the ONE place they live (design.md, "Token packages").
//!
//! Prices live in Stripe (a price id per product, from a Spin variable); what a purchase
//! grants lives here and nowhere else. The client only ever names a product key (or a
//! price id that maps to one), so it can never choose how many tokens it gets.

use serde::Serialize;
use serde_json::{json, Value};

use crate::{config, ApiError, Platform};

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
    /// What the app shows; the amount actually charged is the Stripe price's.
    pub price_label: &'static str,
    /// The Spin variable holding the product's Stripe price id.
    pub price_variable: &'static str,
}

pub const PRODUCTS: &[Product] = &[
    Product {
        key: "mystic-subscription",
        name: "Mystic",
        kind: ProductKind::Subscription,
        tokens: 0,
        bonus: 0,
        price_label: "Subscription",
        price_variable: "stripe_price_mystic_subscription",
    },
    Product {
        key: "tokens-small",
        name: "100 tokens",
        kind: ProductKind::Tokens,
        tokens: 100,
        bonus: 10,
        price_label: "$4.99",
        price_variable: "stripe_price_tokens_small",
    },
    Product {
        key: "tokens-medium",
        name: "250 tokens",
        kind: ProductKind::Tokens,
        tokens: 250,
        bonus: 50,
        price_label: "$9.99",
        price_variable: "stripe_price_tokens_medium",
    },
    Product {
        key: "tokens-large",
        name: "500 tokens",
        kind: ProductKind::Tokens,
        tokens: 500,
        bonus: 150,
        price_label: "$19.99",
        price_variable: "stripe_price_tokens_large",
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

    /// The configured Stripe price id; a 500 naming the variable when it is not set.
    pub fn price_id(&self, platform: &dyn Platform) -> Result<String, ApiError> {
        config::required(platform, self.price_variable)
    }

    /// How the client sees the product (`GET /stripe-checkout/products`).
    pub fn listing(&self, platform: &dyn Platform) -> Value {
        json!({
            "product": self.key,
            "name": self.name,
            "kind": self.kind,
            "tokens": self.tokens,
            "bonus": self.bonus,
            "total_tokens": self.credited_tokens(),
            "price_label": self.price_label,
            // Unconfigured products are listed but cannot be bought yet.
            "available": platform.variable(self.price_variable).is_some(),
        })
    }
}

pub fn find(key: &str) -> Option<&'static Product> {
    PRODUCTS.iter().find(|p| p.key == key)
}

/// The product whose configured price id is `price_id` (the Supabase Stripe template
/// sends price ids); `None` for any price that is not in the catalog.
pub fn find_by_price(platform: &dyn Platform, price_id: &str) -> Option<&'static Product> {
    if price_id.is_empty() {
        return None;
    }
    PRODUCTS.iter().find(|p| platform.variable(p.price_variable).as_deref() == Some(price_id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakePlatform;

    #[test]
    fn stripe_catalog_matches_the_design() {
        let amounts: Vec<(&str, i32)> = PRODUCTS.iter().map(|p| (p.key, p.credited_tokens())).collect();
        assert_eq!(
            amounts,
            [("mystic-subscription", 0), ("tokens-small", 110), ("tokens-medium", 300), ("tokens-large", 650)]
        );
        assert_eq!(find("tokens-medium").unwrap().checkout_mode(), "payment");
        assert_eq!(find("mystic-subscription").unwrap().checkout_mode(), "subscription");
        assert!(find("tokens-huge").is_none());
    }

    #[test]
    fn stripe_catalog_price_lookup_uses_variables() {
        let platform = FakePlatform::with_vars(&[("stripe_price_tokens_small", "price_small")]);
        assert_eq!(find_by_price(&platform, "price_small").map(|p| p.key), Some("tokens-small"));
        assert!(find_by_price(&platform, "price_other").is_none());
        assert!(find_by_price(&platform, "").is_none());
        let missing = find("tokens-large").unwrap().price_id(&platform).unwrap_err();
        assert_eq!((missing.status, missing.code), (500, "config_missing"));
        assert_eq!(find("tokens-small").unwrap().listing(&platform)["available"], true);
        assert_eq!(find("tokens-large").unwrap().listing(&platform)["available"], false);
    }
}
