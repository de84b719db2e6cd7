//! The demo catalogue `orderflow run` starts with, so that a first `curl` works.

use orderflow_store::Product;

pub fn catalogue() -> Vec<Product> {
    [
        ("BOTTLE-001", "Steel water bottle", 1990, 2_000),
        ("HOODIE-001", "Orderflow hoodie", 4900, 1_000),
        ("LIMITED-001", "Signed limited print", 12000, 3),
        ("MUG-001", "Orderflow mug", 1250, 5_000),
        ("STICKER-001", "Sticker pack", 499, 1_000_000),
        ("TEE-001", "Orderflow T-shirt", 2400, 3_000),
    ]
    .into_iter()
    .map(|(sku, name, price_cents, stock)| Product {
        sku: sku.into(),
        name: name.into(),
        price_cents,
        currency: "EUR".into(),
        stock,
        reserved: 0,
        discontinued: false,
    })
    .collect()
}
