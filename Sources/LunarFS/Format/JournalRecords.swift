import LunarIO

/// A host slot's metadata journal: `journal size` bytes at journal offset + slot × journal size.
/// Its first sector is the journal header; the rest is the log, written from log position 0 on.
///
/// Journal header:
/// ```
///  0 32 record header (magic "LJHD")
/// 32  4 slot
/// 36  4 reserved
/// 40  8 start sequence   sequence number of the first transaction replay looks for
/// 48  8 start position   where it starts, in bytes from the start of the log
/// 56 16 volume UUID
/// ```
///
/// A transaction is one contiguous run of sectors in the log:
/// `descriptor × D, image × N, commit`. Each image is the full new content of one metadata
/// sector (itself a checksummed record); the descriptors list where each image belongs.
/// Replay starts at (start sequence, start position) and applies transaction after transaction
/// while each is complete — right sequence and volume tag, sound descriptors, a commit whose
/// checksum covers descriptors and images — and stops at the first that is not. A complete
/// transaction whose images do not verify as records at their targets was written wrong, not
/// torn: replay refuses it with an error rather than guess.
/// Replaying twice writes the same images again: idempotent.
///
/// Descriptor:
/// ```
///  0 32 record header (magic "LJTX")
/// 32  8 sequence
/// 40  4 index of this descriptor in the transaction
/// 44  4 descriptors in the transaction (D)
/// 48  4 images in the transaction (N)
/// 52  4 images listed in this descriptor (at most 504)
/// 56  8 volume tag       the volume UUID's first 8 bytes, little-endian: a journal left by
///                        an earlier volume on the same device never replays into this one
/// 64  8 × n  target byte offsets of the images, in log order
/// ```
/// Commit:
/// ```
///  0 32 record header (magic "LJCM")
/// 32  8 sequence
/// 40  4 images (N)
/// 44  4 descriptors (D)
/// 48  4 CRC32C of the D + N sectors before it, as written
/// ```
enum JournalLayout {
    static let targetsPerDescriptor = (RecordHeader.sectorSize - 64) / 8

    static func descriptorCount(images: Int) -> Int {
        max(1, (images + targetsPerDescriptor - 1) / targetsPerDescriptor)
    }

    /// Sectors a transaction of `images` images occupies in the log.
    static func sectors(images: Int) -> Int { descriptorCount(images: images) + images + 1 }
}

struct JournalHeader: Equatable {
    var slot: UInt32
    var startSequence: UInt64
    var startPosition: UInt64
    var volume: VolumeID

    func encode(into b: IOBuffer) {
        b.fill(0)
        b.store(slot, at: 32)
        b.store(startSequence, at: 40)
        b.store(startPosition, at: 48)
        b.storeBytes(volume.bytes, at: 56, padTo: 16)
    }

    static func decode(_ b: IOBuffer) -> JournalHeader {
        JournalHeader(slot: b.load(32), startSequence: b.load(40), startPosition: b.load(48),
                      volume: VolumeID(bytes: b.loadBytes(56, count: 16)))
    }
}
