//! The invoice's font: DejaVu Sans (regular and bold, `store/assets/fonts`, compiled in),
//! embedded in each PDF as a subset of the glyphs the invoice uses.
//!
//! Text is written as glyph ids (a `Type0` font, `Identity-H` encoding, over a TrueType
//! `CIDFontType2` whose CIDs are the subset's glyph ids) with a `ToUnicode` map, so any
//! character the font has prints as written and the text can still be searched and copied. A
//! character the font lacks prints as its `.notdef` box, never as another character.

use std::{collections::BTreeMap, sync::LazyLock};

use pdf_writer::{
    types::{CidFontType, FontFlags, SystemInfo, UnicodeCmap},
    Finish, Name, Pdf, Rect, Ref, Str,
};
use subsetter::GlyphRemapper;
use ttf_parser::{Face, GlyphId};

/// A TrueType face compiled into the binary.
pub(crate) struct FontFace {
    data: &'static [u8],
    face: Face<'static>,
    /// The PostScript name, after the subset tag.
    name: &'static str,
}

fn load(data: &'static [u8], name: &'static str) -> FontFace {
    let face = Face::parse(data, 0).expect("the compiled-in font parses");
    FontFace { data, face, name }
}

pub(crate) static REGULAR: LazyLock<FontFace> = LazyLock::new(|| {
    load(
        include_bytes!("../../assets/fonts/DejaVuSans.ttf"),
        "DejaVuSans",
    )
});

pub(crate) static BOLD: LazyLock<FontFace> = LazyLock::new(|| {
    load(
        include_bytes!("../../assets/fonts/DejaVuSans-Bold.ttf"),
        "DejaVuSans-Bold",
    )
});

impl FontFace {
    /// The glyph of `c` (0, `.notdef`, when the font lacks it).
    fn glyph(&self, c: char) -> u16 {
        self.face.glyph_index(c).map_or(0, |g| g.0)
    }

    /// A glyph's advance in thousandths of the font size.
    fn advance(&self, glyph: u16) -> f32 {
        let units = self.face.glyph_hor_advance(GlyphId(glyph)).unwrap_or(0);
        f32::from(units) * 1000.0 / f32::from(self.face.units_per_em())
    }

    /// The width of `text` at `size` points.
    pub(crate) fn width(&self, text: &str, size: f32) -> f32 {
        text.chars()
            .map(|c| self.advance(self.glyph(c)))
            .sum::<f32>()
            * size
            / 1000.0
    }

    /// In thousandths of the font size.
    fn scaled(&self, units: i16) -> f32 {
        f32::from(units) * 1000.0 / f32::from(self.face.units_per_em())
    }
}

const IDENTITY: SystemInfo = SystemInfo {
    registry: Str(b"Adobe"),
    ordering: Str(b"Identity"),
    supplement: 0,
};

/// The glyphs of one font that a document uses, gathered as its text is encoded.
pub(crate) struct Subset {
    face: &'static FontFace,
    remapper: GlyphRemapper,
    /// The character each subset glyph stands for (the first one seen).
    chars: BTreeMap<u16, char>,
}

impl Subset {
    pub(crate) fn new(face: &'static FontFace) -> Self {
        Subset {
            face,
            remapper: GlyphRemapper::new(),
            chars: BTreeMap::new(),
        }
    }

    /// `text` as the bytes of a PDF string in this subset: two per glyph, big-endian.
    pub(crate) fn encode(&mut self, text: &str) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(text.len() * 2);
        for c in text.chars() {
            let glyph = self.remapper.remap(self.face.glyph(c));
            self.chars.entry(glyph).or_insert(c);
            bytes.extend_from_slice(&glyph.to_be_bytes());
        }
        bytes
    }

    /// Writes the font (five objects from `first`: the Type0 font, its CID font, descriptor,
    /// font file and ToUnicode map); `tag` makes the subset's name (six capitals).
    pub(crate) fn write(&self, pdf: &mut Pdf, first: Ref, tag: &str) {
        let [type0, cid, descriptor, file, cmap] =
            [0, 1, 2, 3, 4].map(|i| Ref::new(first.get() + i));
        let name = format!("{tag}+{}", self.face.name);
        let name = Name(name.as_bytes());
        pdf.type0_font(type0)
            .base_font(name)
            .encoding_predefined(Name(b"Identity-H"))
            .descendant_font(cid)
            .to_unicode(cmap);

        let mut font = pdf.cid_font(cid);
        font.subtype(CidFontType::Type2)
            .base_font(name)
            .system_info(IDENTITY)
            .font_descriptor(descriptor)
            .default_width(0.0)
            .cid_to_gid_map_predefined(Name(b"Identity"));
        // The subset's glyphs in their new order: old ids by new id.
        let old: Vec<u16> = self.remapper.remapped_gids().collect();
        font.widths()
            .consecutive(0, old.iter().map(|&g| self.face.advance(g)));
        font.finish();

        let face = &self.face.face;
        let bbox = face.global_bounding_box();
        let bold = self.face.name.contains("Bold");
        let mut flags = FontFlags::NON_SYMBOLIC;
        if bold {
            flags |= FontFlags::FORCE_BOLD;
        }
        pdf.font_descriptor(descriptor)
            .name(name)
            .flags(flags)
            .bbox(Rect::new(
                self.face.scaled(bbox.x_min),
                self.face.scaled(bbox.y_min),
                self.face.scaled(bbox.x_max),
                self.face.scaled(bbox.y_max),
            ))
            .italic_angle(0.0)
            .ascent(self.face.scaled(face.ascender()))
            .descent(self.face.scaled(face.descender()))
            .cap_height(
                self.face
                    .scaled(face.capital_height().unwrap_or(face.ascender())),
            )
            .stem_v(if bold { 120.0 } else { 80.0 })
            .font_file2(file);

        // A glyph set that cannot be cut out (never for the compiled-in fonts): the whole font.
        let data = subsetter::subset(self.face.data, 0, &self.remapper)
            .unwrap_or_else(|_| self.face.data.to_vec());
        pdf.stream(file, &data)
            .pair(Name(b"Length1"), data.len() as i32);

        let mut map = UnicodeCmap::<u16>::new(Name(b"Custom"), IDENTITY);
        for (&glyph, &c) in &self.chars {
            map.pair(glyph, c);
        }
        pdf.cmap(cmap, &map.finish())
            .name(Name(b"Custom"))
            .system_info(IDENTITY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fonts_cover_names_beyond_latin_1() {
        for c in ['é', 'ł', 'Ж', 'Ω', 'ş', 'ğ', 'ő', '€'] {
            assert_ne!(REGULAR.glyph(c), 0, "{c}");
            assert_ne!(BOLD.glyph(c), 0, "{c}");
        }
        assert!(REGULAR.width("Total", 10.0) > 10.0);
        assert!(BOLD.width("W", 10.0) > REGULAR.width("i", 10.0));
    }

    #[test]
    fn text_is_encoded_as_subset_glyph_ids() {
        let mut subset = Subset::new(&REGULAR);
        let first = subset.encode("Ab");
        assert_eq!(
            first,
            vec![0, 1, 0, 2],
            "after .notdef, in order of first use"
        );
        assert_eq!(subset.encode("bA"), vec![0, 2, 0, 1]);
        assert_eq!(subset.chars.get(&2), Some(&'b'));
    }
}
