//! An invoice as a PDF, with `pdf-writer`: A4 pages, the standard Helvetica font (no font
//! embedded), content streams left uncompressed (so the text can be searched in the file).
//!
//! Deterministic: the same invoice always gives the same bytes (no creation date, no random
//! document id), so a redelivered event stores the same object again.

use crate::Invoice;
use orderflow_schemas::format_cents;
use pdf_writer::{Content, Finish, Name, Pdf, Rect, Ref, Str};

const A4: (f32, f32) = (595.0, 842.0);
const MARGIN: f32 = 56.0;
const LEADING: f32 = 16.0;
/// Line rows per page (the first page also has the header, the last the totals).
const ROWS_PER_PAGE: usize = 36;

/// Column x positions: description, quantity, unit price, amount (right edges for numbers).
const X_DESC: f32 = MARGIN;
const X_QTY: f32 = 340.0;
const X_UNIT: f32 = 440.0;
const X_AMOUNT: f32 = A4.0 - MARGIN;

/// Renders the invoice. CPU work: call it from `spawn_blocking`.
pub fn render(invoice: &Invoice) -> Vec<u8> {
    let p = &invoice.pricing;
    let money = |cents: i64| format!("{} {}", format_cents(cents), p.currency);

    let chunks: Vec<&[orderflow_schemas::OrderLine]> = if p.lines.is_empty() {
        vec![&[]]
    } else {
        p.lines.chunks(ROWS_PER_PAGE).collect()
    };
    let pages = chunks.len();

    let catalog = Ref::new(1);
    let tree = Ref::new(2);
    let regular = Ref::new(3);
    let bold = Ref::new(4);
    let page_ref = |i: usize| Ref::new(5 + 2 * i as i32);
    let content_ref = |i: usize| Ref::new(6 + 2 * i as i32);
    let (f_regular, f_bold) = (Name(b"F1"), Name(b"F2"));

    let mut pdf = Pdf::new();
    pdf.catalog(catalog).pages(tree);
    pdf.pages(tree)
        .kids((0..pages).map(page_ref))
        .count(pages as i32);
    pdf.type1_font(regular)
        .base_font(Name(b"Helvetica"))
        .encoding_predefined(Name(b"WinAnsiEncoding"));
    pdf.type1_font(bold)
        .base_font(Name(b"Helvetica-Bold"))
        .encoding_predefined(Name(b"WinAnsiEncoding"));

    for (i, lines) in chunks.iter().enumerate() {
        let mut page = pdf.page(page_ref(i));
        page.parent(tree)
            .media_box(Rect::new(0.0, 0.0, A4.0, A4.1))
            .contents(content_ref(i));
        page.resources()
            .fonts()
            .pair(f_regular, regular)
            .pair(f_bold, bold);
        page.finish();

        let mut c = Canvas::new();
        let mut y = A4.1 - MARGIN;
        if i == 0 {
            c.text(f_bold, 20.0, X_DESC, y, "Invoice");
            c.right(f_bold, 12.0, X_AMOUNT, y, &invoice.number);
            y -= 2.0 * LEADING;
            c.text(
                f_regular,
                10.0,
                X_DESC,
                y,
                &format!("Invoice number: {}", invoice.number),
            );
            y -= LEADING;
            c.text(
                f_regular,
                10.0,
                X_DESC,
                y,
                &format!("Date: {}", date(invoice.issued_at)),
            );
            y -= LEADING;
            c.text(
                f_regular,
                10.0,
                X_DESC,
                y,
                &format!("Customer: {}", invoice.customer_id),
            );
            y -= LEADING;
            c.text(
                f_regular,
                10.0,
                X_DESC,
                y,
                &format!("Order: {}", invoice.order_id),
            );
            y -= 2.0 * LEADING;
        }
        c.text(f_bold, 10.0, X_DESC, y, "Item");
        c.right(f_bold, 10.0, X_QTY, y, "Qty");
        c.right(f_bold, 10.0, X_UNIT, y, "Unit price");
        c.right(f_bold, 10.0, X_AMOUNT, y, "Amount");
        y -= 4.0;
        c.rule(y);
        y -= LEADING;
        for line in lines.iter() {
            c.text(
                f_regular,
                10.0,
                X_DESC,
                y,
                &format!("{} ({})", line.name, line.sku),
            );
            c.right(f_regular, 10.0, X_QTY, y, &line.quantity.to_string());
            c.right(f_regular, 10.0, X_UNIT, y, &money(line.unit_price_cents));
            c.right(f_regular, 10.0, X_AMOUNT, y, &money(line.line_total_cents));
            y -= LEADING;
        }
        if i + 1 == pages {
            c.rule(y + LEADING - 6.0);
            y -= 4.0;
            for (label, cents, font) in [
                ("Subtotal", p.subtotal_cents, f_regular),
                ("Tax", p.tax_cents, f_regular),
                ("Total", p.total_cents, f_bold),
            ] {
                c.right(font, 10.0, X_UNIT, y, label);
                c.right(font, 10.0, X_AMOUNT, y, &money(cents));
                y -= LEADING;
            }
        } else {
            c.right(f_regular, 9.0, X_AMOUNT, y, "continued on the next page");
        }
        c.right(
            f_regular,
            8.0,
            X_AMOUNT,
            MARGIN / 2.0,
            &format!("{} - page {} of {pages}", invoice.number, i + 1),
        );
        pdf.stream(content_ref(i), &c.0.finish());
    }
    pdf.finish()
}

/// A page's content stream.
struct Canvas(Content);

impl Canvas {
    fn new() -> Self {
        Canvas(Content::new())
    }

    fn text(&mut self, font: Name, size: f32, x: f32, y: f32, text: &str) {
        let bytes = win_ansi(text);
        self.0
            .begin_text()
            .set_font(font, size)
            .next_line(x, y)
            .show(Str(&bytes))
            .end_text();
    }

    /// Text ending at `right`.
    fn right(&mut self, font: Name, size: f32, right: f32, y: f32, text: &str) {
        let bold = font == Name(b"F2");
        self.text(font, size, right - width(text, size, bold), y, text);
    }

    fn rule(&mut self, y: f32) {
        self.0
            .set_line_width(0.5)
            .move_to(MARGIN, y)
            .line_to(A4.0 - MARGIN, y)
            .stroke();
    }
}

/// The text in WinAnsiEncoding (Latin-1 for what invoices hold); other characters as `?`.
fn win_ansi(text: &str) -> Vec<u8> {
    text.chars()
        .map(|c| match u32::from(c) {
            0x20..=0x7e | 0xa0..=0xff => c as u8,
            _ => b'?',
        })
        .collect()
}

/// Approximate width of Helvetica text (its average advance per character class), enough to
/// right-align numbers: digits, `.`, space and capitals have their exact widths.
fn width(text: &str, size: f32, bold: bool) -> f32 {
    let units: u32 = text
        .chars()
        .map(|c| match c {
            '0'..='9' => 556,
            '.' | ',' | ' ' => 278,
            '-' => 333,
            'A'..='Z' if bold => 722,
            'A'..='Z' => 667,
            'i' | 'l' | 'j' | 't' | 'f' | 'r' => 278,
            'm' | 'w' => 833,
            _ if bold => 611,
            _ => 556,
        })
        .sum();
    units as f32 * size / 1000.0
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

#[cfg(test)]
pub(crate) mod tests {
    use orderflow_schemas::OrderLine;

    use super::*;
    use crate::Pricing;

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

    fn contains(haystack: &[u8], needle: &str) -> bool {
        haystack
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
    }

    #[test]
    fn the_pdf_shows_the_invoice_and_is_the_same_every_time() {
        let pdf = render(&invoice(1));
        assert!(pdf.starts_with(b"%PDF-"));
        for text in [
            "(INV-00000042)",
            "(Date: 2025-06-15)",
            "(Customer: c1)",
            "(25.00 EUR)",
            "(5.00 EUR)",
            "(30.00 EUR)",
            "(Total)",
            "/Helvetica",
        ] {
            assert!(contains(&pdf, text), "{text} is in the PDF");
        }
        // Text with parentheses or beyond ASCII is written in hex; é is its WinAnsi byte E9.
        assert!(contains(&pdf, "<4D75672028636166E92920284D55472D30303029>"));
        assert_eq!(render(&invoice(1)), pdf, "deterministic");
    }

    #[test]
    fn long_invoices_go_on_to_more_pages() {
        let pdf = render(&invoice(100));
        assert!(contains(&pdf, "/Count 3"));
        assert!(contains(&pdf, "(INV-00000042 - page 3 of 3)"));
        assert!(contains(&pdf, "(3000.00 EUR)"));
    }

    #[test]
    fn dates_are_utc_calendar_days() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(951_782_400_000), "2000-02-29");
        assert_eq!(date(1_750_000_000_000), "2025-06-15");
    }
}
