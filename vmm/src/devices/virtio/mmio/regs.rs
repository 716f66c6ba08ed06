//! Register offsets and fixed values of the virtio-mmio window (virtio 1.2,
//! section 4.2.2, Version 2 layout).

/// Size of one device's MMIO window (registers + config space).
pub const MMIO_SIZE: u64 = 0x1000;

/// "virt" in little-endian: identifies a virtio-mmio window.
pub const MMIO_MAGIC_VALUE: u32 = 0x7472_6976;
/// Version 2: the virtio 1.x register layout (no legacy).
pub const MMIO_VERSION: u32 = 2;
/// VendorID reported to the guest; Linux does not interpret it.
pub const MMIO_VENDOR_ID: u32 = 0;

/// MagicValue (R).
pub const REG_MAGIC_VALUE: u64 = 0x000;
/// Version (R).
pub const REG_VERSION: u64 = 0x004;
/// DeviceID (R).
pub const REG_DEVICE_ID: u64 = 0x008;
/// VendorID (R).
pub const REG_VENDOR_ID: u64 = 0x00c;
/// DeviceFeatures (R): 32 bits of the offered features, see DeviceFeaturesSel.
pub const REG_DEVICE_FEATURES: u64 = 0x010;
/// DeviceFeaturesSel (W): which 32-bit word DeviceFeatures shows.
pub const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
/// DriverFeatures (W): 32 bits of the accepted features.
pub const REG_DRIVER_FEATURES: u64 = 0x020;
/// DriverFeaturesSel (W).
pub const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
/// QueueSel (W): the queue the Queue* registers address.
pub const REG_QUEUE_SEL: u64 = 0x030;
/// QueueNumMax (R): 0 means the queue does not exist.
pub const REG_QUEUE_NUM_MAX: u64 = 0x034;
/// QueueNum (W): the size the driver chose.
pub const REG_QUEUE_NUM: u64 = 0x038;
/// QueueReady (RW).
pub const REG_QUEUE_READY: u64 = 0x044;
/// QueueNotify (W): the value is the queue index.
pub const REG_QUEUE_NOTIFY: u64 = 0x050;
/// InterruptStatus (R).
pub const REG_INTERRUPT_STATUS: u64 = 0x060;
/// InterruptACK (W).
pub const REG_INTERRUPT_ACK: u64 = 0x064;
/// Status (RW).
pub const REG_STATUS: u64 = 0x070;
/// QueueDescLow (W).
pub const REG_QUEUE_DESC_LOW: u64 = 0x080;
/// QueueDescHigh (W).
pub const REG_QUEUE_DESC_HIGH: u64 = 0x084;
/// QueueDriverLow (W): the available ring.
pub const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
/// QueueDriverHigh (W).
pub const REG_QUEUE_DRIVER_HIGH: u64 = 0x094;
/// QueueDeviceLow (W): the used ring.
pub const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
/// QueueDeviceHigh (W).
pub const REG_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
/// SHMLenLow (R): no shared memory regions, so all ones.
pub const REG_SHM_LEN_LOW: u64 = 0x0b0;
/// SHMLenHigh (R).
pub const REG_SHM_LEN_HIGH: u64 = 0x0b4;
/// ConfigGeneration (R).
pub const REG_CONFIG_GENERATION: u64 = 0x0fc;
/// Config (RW): device config space starts here.
pub const REG_CONFIG: u64 = 0x100;

/// Width of every register below [`REG_CONFIG`].
pub(super) const REGISTER_WIDTH: usize = 4;
/// SHMLen of a region that does not exist.
pub(super) const NO_SHM_REGION: u32 = u32::MAX;
