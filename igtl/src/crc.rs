//! CRC-64 as OpenIGTLink uses it: ECMA-182 polynomial `0x42F0E1EBA9EA3693`, MSB first (not
//! reflected), initial value 0, no final XOR. The check value of the ASCII bytes `123456789` is
//! `0x6C40DF5F0B497347` (the "CRC-64/ECMA-182" entry of the CRC catalogue).

/// The ECMA-182 generator polynomial without its x^64 term.
pub const POLY: u64 = 0x42F0_E1EB_A9EA_3693;

const TABLE: [u64; 256] = build_table();

const fn build_table() -> [u64; 256] {
    let mut table = [0u64; 256];
    let mut byte = 0;
    while byte < 256 {
        let mut reg = (byte as u64) << 56;
        let mut bit = 0;
        while bit < 8 {
            reg = if reg & (1 << 63) != 0 {
                (reg << 1) ^ POLY
            } else {
                reg << 1
            };
            bit += 1;
        }
        table[byte] = reg;
        byte += 1;
    }
    table
}

/// CRC-64/ECMA-182 of `data` (the value an OpenIGTLink header carries for its body).
pub fn crc64(data: &[u8]) -> u64 {
    data.iter().fold(0u64, |crc, &b| {
        TABLE[((crc >> 56) as u8 ^ b) as usize] ^ (crc << 8)
    })
}
