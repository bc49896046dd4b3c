// Raw MQTT bytes for tests that must write what no well-behaved client would send.

export /** MQTT Remaining Length varint. */
function varint(n: number): Buffer {
  const out: number[] = []
  do {
    let byte = n % 128
    n = Math.floor(n / 128)
    if (n > 0) byte |= 0x80
    out.push(byte)
  } while (n > 0)
  return Buffer.from(out)
}
