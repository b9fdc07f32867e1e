//! Routing of one I/O: an extent (first LBA, length in blocks) is split at page
//! boundaries into pieces, each with the owner that serves it and the replicas
//! that must see its writes. The split is an iterator: no allocation per I/O.

use crate::error::RoutingError;
use crate::model::{NodeId, Replica, RoutingTable, VolumeId, VolumeMap};

/// The part of an extent that falls into one page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece<'a> {
    /// Page number inside the volume.
    pub page: u64,
    /// First block of the piece.
    pub lba: u64,
    /// Length of the piece in blocks (at most one page).
    pub blocks: u64,
    /// Offset of the piece inside the I/O's data, in blocks: where its bytes go in
    /// the gathered buffer.
    pub offset: u64,
    /// The page's primary: the node that serves the piece.
    pub owner: NodeId,
    /// The page's replicas, in order.
    pub replicas: &'a [Replica],
}

/// Iterator over the pieces of an extent; see [`VolumeMap::split`].
#[derive(Debug, Clone)]
pub struct Split<'a> {
    map: &'a VolumeMap,
    next_lba: u64,
    end: u64,
    start: u64,
}

impl<'a> Iterator for Split<'a> {
    type Item = Piece<'a>;

    #[inline]
    fn next(&mut self) -> Option<Piece<'a>> {
        if self.next_lba >= self.end {
            return None;
        }
        let lba = self.next_lba;
        let page = lba >> self.map.page_shift;
        let page_end = (page + 1) << self.map.page_shift;
        let end = page_end.min(self.end);
        self.next_lba = end;
        Some(Piece {
            page,
            lba,
            blocks: end - lba,
            offset: lba - self.start,
            owner: self.map.primaries[page as usize],
            replicas: self.map.replicas(page),
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        if self.next_lba >= self.end {
            return (0, Some(0));
        }
        let first = self.next_lba >> self.map.page_shift;
        let last = (self.end - 1) >> self.map.page_shift;
        let n = (last - first + 1) as usize;
        (n, Some(n))
    }
}

impl ExactSizeIterator for Split<'_> {}

impl VolumeMap {
    /// Split the extent `lba .. lba + blocks` into per-page pieces. Refuses an empty
    /// extent or one that reaches past the end of the volume.
    pub fn split(&self, lba: u64, blocks: u64) -> Result<Split<'_>, RoutingError> {
        let end = lba.checked_add(blocks);
        match end {
            Some(end) if blocks > 0 && end <= self.volume.blocks => Ok(Split {
                map: self,
                next_lba: lba,
                end,
                start: lba,
            }),
            _ => Err(RoutingError::OutOfRange {
                lba,
                blocks,
                volume_blocks: self.volume.blocks,
            }),
        }
    }
}

impl RoutingTable {
    /// Split an extent of a volume into per-page pieces with their owners; see
    /// [`VolumeMap::split`].
    pub fn split_extent(
        &self,
        volume: VolumeId,
        lba: u64,
        blocks: u64,
    ) -> Result<Split<'_>, RoutingError> {
        self.volume(volume)
            .ok_or(RoutingError::UnknownVolume(volume))?
            .split(lba, blocks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Volume;

    fn map() -> VolumeMap {
        let v = Volume {
            id: VolumeId(3),
            name: "v".into(),
            blocks: 40,
            block_size: 512,
            page_size: 16 * 512,
            replicas: 1,
        };
        let primaries = vec![NodeId(0), NodeId(1), NodeId(2)];
        let replicas = vec![
            Replica {
                node: NodeId(1),
                in_sync: true,
            },
            Replica {
                node: NodeId(2),
                in_sync: true,
            },
            Replica {
                node: NodeId(0),
                in_sync: false,
            },
        ];
        VolumeMap::from_parts(v, primaries, replicas)
    }

    #[test]
    fn extent_inside_one_page_is_one_piece() {
        let m = map();
        let pieces: Vec<_> = m.split(17, 5).unwrap().collect();
        assert_eq!(pieces.len(), 1);
        assert_eq!(
            (
                pieces[0].page,
                pieces[0].lba,
                pieces[0].blocks,
                pieces[0].offset
            ),
            (1, 17, 5, 0)
        );
        assert_eq!(pieces[0].owner, NodeId(1));
        assert_eq!(pieces[0].replicas[0].node, NodeId(2));
    }

    #[test]
    fn extent_across_three_pages_splits_at_boundaries() {
        let m = map();
        let split = m.split(10, 30).unwrap();
        assert_eq!(split.len(), 3);
        let got: Vec<_> = split.map(|p| (p.page, p.lba, p.blocks, p.offset)).collect();
        assert_eq!(got, vec![(0, 10, 6, 0), (1, 16, 16, 6), (2, 32, 8, 22)]);
    }

    #[test]
    fn extent_past_the_end_or_empty_is_refused() {
        let m = map();
        assert!(m.split(39, 2).is_err());
        assert!(m.split(0, 0).is_err());
        assert!(m.split(u64::MAX, 2).is_err());
        assert!(m.split(39, 1).is_ok());
    }
}
