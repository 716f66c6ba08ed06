//! Sequences with a count cap checked before anything is allocated.
//!
//! postcard sends a sequence's length first, and serde's `Vec` grows to
//! whatever count the input claims as long as elements keep decoding: an
//! empty string is one byte on the wire and 24 decoded, so a 1 MiB
//! payload of them decodes to tens of MiB before any check after the
//! decode could refuse it. These functions, used as
//! `#[serde(deserialize_with = "bounded::vec::<_, MAX>")]`, refuse a
//! count above the cap as it is read, and never reserve more than the
//! cap.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{Deserialize, Deserializer, Error, SeqAccess, Visitor};

struct BoundedVec<T, const MAX: usize>(PhantomData<T>);

impl<'de, T: Deserialize<'de>, const MAX: usize> Visitor<'de> for BoundedVec<T, MAX> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a sequence of at most {MAX} elements")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let claimed = seq.size_hint().unwrap_or(0);
        if claimed > MAX {
            return Err(A::Error::invalid_length(claimed, &self));
        }
        let mut v = Vec::with_capacity(claimed);
        while let Some(x) = seq.next_element()? {
            if v.len() == MAX {
                return Err(A::Error::invalid_length(MAX + 1, &self));
            }
            v.push(x);
        }
        Ok(v)
    }
}

/// A `Vec<T>` of at most `MAX` elements.
pub fn vec<'de, D: Deserializer<'de>, T: Deserialize<'de>, const MAX: usize>(
    d: D,
) -> Result<Vec<T>, D::Error> {
    d.deserialize_seq(BoundedVec::<T, MAX>(PhantomData))
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Two {
        #[serde(deserialize_with = "super::vec::<_, _, 2>")]
        v: Vec<String>,
    }

    #[test]
    fn refuses_a_count_above_the_cap_before_decoding_elements() {
        let ok = Two {
            v: vec!["a".into(), String::new()],
        };
        let b = postcard::to_allocvec(&ok).unwrap();
        assert_eq!(postcard::from_bytes::<Two>(&b).unwrap(), ok);
        // Three empty strings: 4 bytes on the wire, refused by count.
        assert!(postcard::from_bytes::<Two>(&[3, 0, 0, 0]).is_err());
        // A huge claimed count with no elements behind it: refused at once
        // (no allocation of the claim).
        assert!(postcard::from_bytes::<Two>(&[0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
    }
}
