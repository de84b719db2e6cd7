//! An invoice as a PDF, with `pdf-writer`: A4 pages, DejaVu Sans embedded as a subset of the
//! glyphs used (the `font` module), so customers' names and addresses print as written in any
//! script the font covers; content streams left uncompressed.
//!
//! The invoice names who it is for ([`BillTo`]): the customer's name (its account) and the
//! order's shipping address.
//!
//! Deterministic: the same invoice always gives the same bytes (no creation date, no random
//! document id, glyphs numbered in order of first use), so a redelivered event stores the same
//! object again.

mod font;

use std::collections::HashMap;

use crate::{Invoice, Store, StoreError};
use orderflow_schemas::{format_cents, Address};
use pdf_writer::{Content, Finish, Name, Pdf, Rect, Ref, Str};

use font::Subset;

const A4: (f32, f32) = (595.0, 842.0);
const MARGIN: f32 = 56.0;
const LEADING: f32 = 16.0;
/// Line rows per page (the first page also has the header, the last the totals).
const ROWS_PER_PAGE: usize = 26;

/// Column x positions: description, quantity, unit price, amount (right edges for numbers).
const X_DESC: f32 = MARGIN;
const X_QTY: f32 = 340.0;
const X_UNIT: f32 = 440.0;
const X_AMOUNT: f32 = A4.0 - MARGIN;

/// Who an invoice is for, beyond the ids it carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BillTo {
    /// The customer's name, from its account (none for an account that is gone).
    pub customer_name: Option<String>,
    /// Where the order ships.
    pub shipping_address: Option<Address>,
}

/// Reads whom `invoice` is for from the store: the customer's account and the order.
pub async fn bill_to(store: &dyn Store, invoice: &Invoice) -> Result<BillTo, StoreError> {
    let customer_name = store
        .get_account(&invoice.customer_id)
        .await?
        .map(|account| account.name);
    let shipping_address = store
        .get_order(&invoice.order_id)
        .await?
        .and_then(|order| order.shipping_address);
    Ok(BillTo {
        customer_name,
        shipping_address,
    })
}

/// The address as lines: name, street, more, postal code and city, country.
fn address_lines(address: &Address) -> Vec<String> {
    let mut lines = vec![address.name.clone(), address.line1.clone()];
    if let Some(line2) = address.line2.as_ref().filter(|l| !l.trim().is_empty()) {
        lines.push(line2.clone());
    }
    lines.push(format!("{} {}", address.postal_code, address.city));
    lines.push(address.country.clone());
    lines
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Face {
    Regular,
    Bold,
}

/// A page, laid out before its text is encoded (the fonts' subsets fill as it is).
enum Op {
    Text {
        face: Face,
        size: f32,
        x: f32,
        y: f32,
        text: String,
    },
    Rule(f32),
}

/// Renders the invoice. CPU work: call it from `spawn_blocking`.
pub fn render(invoice: &Invoice, bill_to: &BillTo) -> Vec<u8> {
    let p = &invoice.pricing;
    let money = |cents: i64| format!("{} {}", format_cents(cents), p.currency);
    let (regular, bold) = (Face::Regular, Face::Bold);

    let chunks: Vec<&[orderflow_schemas::OrderLine]> = if p.lines.is_empty() {
        vec![&[]]
    } else {
        p.lines.chunks(ROWS_PER_PAGE).collect()
    };
    let pages = chunks.len();

    let mut layouts: Vec<Vec<Op>> = Vec::with_capacity(pages);
    for (i, lines) in chunks.iter().enumerate() {
        let mut c = Canvas::default();
        let mut y = A4.1 - MARGIN;
        if i == 0 {
            c.text(bold, 20.0, X_DESC, y, "Invoice");
            c.right(bold, 12.0, X_AMOUNT, y, &invoice.number);
            y -= 2.0 * LEADING;
            c.text(
                regular,
                10.0,
                X_DESC,
                y,
                &format!("Invoice number: {}", invoice.number),
            );
            y -= LEADING;
            c.text(
                regular,
                10.0,
                X_DESC,
                y,
                &format!("Date: {}", date(invoice.issued_at)),
            );
            y -= LEADING;
            c.text(
                regular,
                10.0,
                X_DESC,
                y,
                &format!("Order: {}", invoice.order_id),
            );
            y -= 2.0 * LEADING;
            // Billed to (the customer) and shipped to (the address), side by side.
            let top = y;
            c.text(bold, 10.0, X_DESC, y, "Customer");
            y -= LEADING;
            let customer = bill_to
                .customer_name
                .clone()
                .unwrap_or_else(|| invoice.customer_id.clone());
            c.text(regular, 10.0, X_DESC, y, &customer);
            let mut left = y - LEADING;
            if let Some(address) = &bill_to.shipping_address {
                let mut y = top;
                c.text(bold, 10.0, X_QTY - 60.0, y, "Ship to");
                for line in address_lines(address) {
                    y -= LEADING;
                    c.text(regular, 10.0, X_QTY - 60.0, y, &line);
                }
                left = left.min(y - LEADING);
            }
            y = left - LEADING;
        }
        c.text(bold, 10.0, X_DESC, y, "Item");
        c.right(bold, 10.0, X_QTY, y, "Qty");
        c.right(bold, 10.0, X_UNIT, y, "Unit price");
        c.right(bold, 10.0, X_AMOUNT, y, "Amount");
        y -= 4.0;
        c.rule(y);
        y -= LEADING;
        for line in lines.iter() {
            c.text(
                regular,
                10.0,
                X_DESC,
                y,
                &format!("{} ({})", line.name, line.sku),
            );
            c.right(regular, 10.0, X_QTY, y, &line.quantity.to_string());
            c.right(regular, 10.0, X_UNIT, y, &money(line.unit_price_cents));
            c.right(regular, 10.0, X_AMOUNT, y, &money(line.line_total_cents));
            y -= LEADING;
        }
        if i + 1 == pages {
            c.rule(y + LEADING - 6.0);
            y -= 4.0;
            for (label, cents, face) in [
                ("Subtotal", p.subtotal_cents, regular),
                ("Tax", p.tax_cents, regular),
                ("Total", p.total_cents, bold),
            ] {
                c.right(face, 10.0, X_UNIT, y, label);
                c.right(face, 10.0, X_AMOUNT, y, &money(cents));
                y -= LEADING;
            }
        } else {
            c.right(regular, 9.0, X_AMOUNT, y, "continued on the next page");
        }
        c.right(
            regular,
            8.0,
            X_AMOUNT,
            MARGIN / 2.0,
            &format!("{} - page {} of {pages}", invoice.number, i + 1),
        );
        layouts.push(c.0);
    }

    let catalog = Ref::new(1);
    let tree = Ref::new(2);
    // Five objects per font (see `Subset::write`).
    let regular_ref = Ref::new(3);
    let bold_ref = Ref::new(8);
    let page_ref = |i: usize| Ref::new(13 + 2 * i as i32);
    let content_ref = |i: usize| Ref::new(14 + 2 * i as i32);
    let (f_regular, f_bold) = (Name(b"F1"), Name(b"F2"));

    let mut pdf = Pdf::new();
    pdf.catalog(catalog).pages(tree);
    pdf.pages(tree)
        .kids((0..pages).map(page_ref))
        .count(pages as i32);

    let mut subsets = [Subset::new(&font::REGULAR), Subset::new(&font::BOLD)];
    for (i, ops) in layouts.iter().enumerate() {
        let mut page = pdf.page(page_ref(i));
        page.parent(tree)
            .media_box(Rect::new(0.0, 0.0, A4.0, A4.1))
            .contents(content_ref(i));
        page.resources()
            .fonts()
            .pair(f_regular, regular_ref)
            .pair(f_bold, bold_ref);
        page.finish();

        let mut content = Content::new();
        for op in ops {
            match op {
                Op::Text {
                    face,
                    size,
                    x,
                    y,
                    text,
                } => {
                    let (name, subset) = match face {
                        Face::Regular => (f_regular, &mut subsets[0]),
                        Face::Bold => (f_bold, &mut subsets[1]),
                    };
                    let bytes = subset.encode(text);
                    content
                        .begin_text()
                        .set_font(name, *size)
                        .next_line(*x, *y)
                        .show(Str(&bytes))
                        .end_text();
                }
                Op::Rule(y) => {
                    content
                        .set_line_width(0.5)
                        .move_to(MARGIN, *y)
                        .line_to(A4.0 - MARGIN, *y)
                        .stroke();
                }
            }
        }
        pdf.stream(content_ref(i), &content.finish());
    }
    // Subset tags from the invoice number: the same invoice, the same bytes.
    subsets[0].write(&mut pdf, regular_ref, &tag(&invoice.number, 0));
    subsets[1].write(&mut pdf, bold_ref, &tag(&invoice.number, 1));
    pdf.finish()
}

/// Six capitals naming a font subset, derived from `seed` (PDF 32000-1, 9.6.4).
fn tag(seed: &str, n: u8) -> String {
    let mut h: u32 = 2_166_136_261 ^ u32::from(n);
    for b in seed.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(16_777_619);
    }
    (0..6)
        .map(|i| char::from(b'A' + ((h >> (i * 5)) % 26) as u8))
        .collect()
}

/// A page being laid out.
#[derive(Default)]
struct Canvas(Vec<Op>);

impl Canvas {
    fn text(&mut self, face: Face, size: f32, x: f32, y: f32, text: &str) {
        self.0.push(Op::Text {
            face,
            size,
            x,
            y,
            text: text.to_string(),
        });
    }

    /// Text ending at `right`.
    fn right(&mut self, face: Face, size: f32, right: f32, y: f32, text: &str) {
        let font = match face {
            Face::Regular => &*font::REGULAR,
            Face::Bold => &*font::BOLD,
        };
        self.text(face, size, right - font.width(text, size), y, text);
    }

    fn rule(&mut self, y: f32) {
        self.0.push(Op::Rule(y));
    }
}

/// `YYYY-MM-DD` (UTC) of a time in ms since the epoch.
fn date(ms: i64) -> String {
    // Howard Hinnant's civil-from-days.
    let days = ms.div_euclid(86_400_000);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

fn hex(s: &str) -> Vec<u16> {
    s.as_bytes()
        .chunks(4)
        .filter_map(|c| u16::from_str_radix(std::str::from_utf8(c).ok()?, 16).ok())
        .collect()
}

/// The text of every text operation of a PDF [`render`] wrote, read back through the fonts'
/// ToUnicode maps as a PDF reader extracts it: for tests and tools that check what an invoice
/// says. Panics on a PDF of another making.
pub fn texts(pdf: &[u8]) -> Vec<String> {
    let doc = String::from_utf8_lossy(pdf);
    let maps: Vec<HashMap<u16, char>> = doc
        .split("beginbfchar")
        .skip(1)
        .map(|block| {
            let block = block.split("endbfchar").next().unwrap();
            let codes: Vec<&str> = block
                .split(['<', '>'])
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect();
            codes
                .chunks(2)
                .map(|pair| {
                    let glyph = hex(pair[0])[0];
                    let units = hex(pair[1]);
                    (glyph, char::decode_utf16(units).next().unwrap().unwrap())
                })
                .collect()
        })
        .collect();
    assert_eq!(maps.len(), 2, "a ToUnicode map per font");
    // The operand of each `Tj`, a hex or a literal string (two bytes per glyph).
    let mut out: Vec<Vec<u16>> = Vec::new();
    for op in pdf.split(|&b| b == b'\n') {
        let Some(operand) = op.strip_suffix(b" Tj") else {
            continue;
        };
        let bytes = match operand {
            [b'<', hex_digits @ .., b'>'] => hex_bytes(hex_digits),
            [b'(', literal @ .., b')'] => unescape(literal),
            other => panic!("not a string: {:?}", String::from_utf8_lossy(other)),
        };
        out.push(
            bytes
                .chunks(2)
                .map(|p| u16::from_be_bytes([p[0], p[1]]))
                .collect(),
        );
    }
    // Which font each text is in: the name before each ` Tf`.
    let fonts: Vec<usize> = doc
        .split(" Tf")
        .take(out.len())
        .map(|before| {
            let name = before.rsplit('/').next().unwrap();
            usize::from(name.starts_with("F2"))
        })
        .collect();
    out.into_iter()
        .zip(fonts)
        .map(|(glyphs, font)| glyphs.iter().map(|g| maps[font][g]).collect())
        .collect()
}

fn hex_bytes(digits: &[u8]) -> Vec<u8> {
    digits
        .chunks(2)
        .map(|d| u8::from_str_radix(std::str::from_utf8(d).unwrap(), 16).unwrap())
        .collect()
}

/// A PDF literal string's bytes (escapes: `\\n`-style, octal, escaped delimiters).
fn unescape(literal: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < literal.len() {
        if literal[i] != b'\\' {
            out.push(literal[i]);
            i += 1;
            continue;
        }
        i += 1;
        match literal[i] {
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'0'..=b'7' => {
                let digits: Vec<u8> = literal[i..]
                    .iter()
                    .take(3)
                    .take_while(|d| (b'0'..=b'7').contains(d))
                    .copied()
                    .collect();
                out.push(u8::from_str_radix(std::str::from_utf8(&digits).unwrap(), 8).unwrap());
                i += digits.len() - 1;
            }
            other => out.push(other),
        }
        i += 1;
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use crate::Pricing;
    use orderflow_schemas::OrderLine;

    use super::*;

    pub(crate) fn invoice(lines: usize) -> Invoice {
        Invoice {
            number: "INV-00000042".into(),
            sequence: 42,
            order_id: "01934b2c-5e10-7abc-8def-0123456789ab".into(),
            customer_id: "c1".into(),
            pricing: Pricing {
                lines: (0..lines)
                    .map(|i| OrderLine {
                        sku: format!("MUG-{i:03}"),
                        name: "Mug (café)".into(),
                        quantity: 2,
                        unit_price_cents: 1250,
                        line_total_cents: 2500,
                    })
                    .collect(),
                currency: "EUR".into(),
                subtotal_cents: 2500 * lines as i64,
                tax_cents: 500 * lines as i64,
                total_cents: 3000 * lines as i64,
            },
            issued_at: 1_750_000_000_000,
        }
    }

    pub(crate) fn bill_to() -> BillTo {
        BillTo {
            customer_name: Some("Zoë Łukasiewicz-Жуков".into()),
            shipping_address: Some(Address {
                name: "Ελένη Παπαδοπούλου".into(),
                line1: "Straße des 17. Juni 1".into(),
                line2: None,
                city: "Berlin".into(),
                postal_code: "10623".into(),
                country: "DE".into(),
            }),
        }
    }

    fn contains(haystack: &[u8], needle: &str) -> bool {
        haystack
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
    }

    #[test]
    fn the_pdf_names_the_customer_and_address_in_any_script_and_is_the_same_every_time() {
        let pdf = render(&invoice(1), &bill_to());
        assert!(pdf.starts_with(b"%PDF-"));
        let texts = texts(&pdf);
        for text in [
            "INV-00000042",
            "Date: 2025-06-15",
            "Zoë Łukasiewicz-Жуков",
            "Ship to",
            "Ελένη Παπαδοπούλου",
            "Straße des 17. Juni 1",
            "10623 Berlin",
            "Mug (café) (MUG-000)",
            "25.00 EUR",
            "5.00 EUR",
            "30.00 EUR",
            "Total",
        ] {
            assert!(texts.iter().any(|t| t == text), "{text} in {texts:?}");
        }
        assert!(!texts.iter().any(|t| t.contains('?')), "{texts:?}");
        assert!(
            !texts.iter().any(|t| t.contains("c1")),
            "the name, not the id"
        );
        assert!(contains(&pdf, "+DejaVuSans-Bold"), "the fonts are embedded");
        assert!(contains(&pdf, "/FontFile2"));
        assert!(
            pdf.len() < 120_000,
            "only the glyphs used: {} bytes",
            pdf.len()
        );
        assert_eq!(render(&invoice(1), &bill_to()), pdf, "deterministic");
    }

    #[test]
    fn without_an_account_the_customer_id_stands() {
        let texts = texts(&render(&invoice(1), &BillTo::default()));
        assert!(texts.iter().any(|t| t == "c1"), "{texts:?}");
        assert!(!texts.iter().any(|t| t == "Ship to"));
    }

    #[test]
    fn long_invoices_go_on_to_more_pages() {
        let pdf = render(&invoice(100), &bill_to());
        assert!(contains(&pdf, "/Count 4"));
        let texts = texts(&pdf);
        assert!(texts.iter().any(|t| t == "INV-00000042 - page 4 of 4"));
        assert!(texts.iter().any(|t| t == "3000.00 EUR"));
    }

    #[test]
    fn dates_are_utc_calendar_days() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(951_782_400_000), "2000-02-29");
        assert_eq!(date(1_750_000_000_000), "2025-06-15");
    }
}
