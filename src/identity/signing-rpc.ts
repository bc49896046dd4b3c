// Registry operations of signed and encrypted readings (docs/device-signing.md), for the admin RPC and the CLI:
// the `signed readings required` policy, a device's content key (generated here, stored only wrapped under the
// server's key, returned once to whoever provisions the device), and the certificate fields of a registration.
import { z } from 'zod'
import type { BrokerConfig } from '../../broker.config.js'
import { type Registry, RegistryError } from '../store/registry.js'
import { loadDeviceWrapKey, newContentKey, wrapContentKey } from './content-key.js'
import { fingerprint256 } from './pki.js'

const id = z.string().regex(/^[A-Za-z0-9_-]{1,64}$/)

/** Extra fields of a device registration (registerDevice, registerDevices). */
export const signingRegistrationFields = {
  /** the certificate (PEM) whose fingerprint is registered: its key verifies the device's signed readings */
  certPem: z.string().max(16_384).optional(),
  signedRequired: z.boolean().optional(),
}

export const signingRpcSchemas = [
  z.object({ op: z.literal('setDevicePolicy'), deviceId: id, signedRequired: z.boolean() }),
  /** a new content key for the device (any previous one stops opening its readings); answered once, base64 */
  z.object({ op: z.literal('provisionContentKey'), deviceId: id }),
] as const

export type SigningRpcRequest = z.infer<(typeof signingRpcSchemas)[number]>
const OPS: ReadonlySet<string> = new Set(signingRpcSchemas.map((s) => s.shape.op.value))

export function isSigningRpc(req: { op: string }): req is SigningRpcRequest {
  return OPS.has(req.op)
}

/** The registration's signing fields, checked: a certificate must be the one whose fingerprint is registered. */
export function signingOf(d: { fingerprint: string; certPem?: string | undefined; signedRequired?: boolean }): {
  certPem?: string
  signedRequired?: boolean
} {
  if (d.certPem !== undefined) {
    let fp: string
    try {
      fp = fingerprint256(d.certPem)
    } catch {
      throw new RegistryError('certPem is not a PEM certificate')
    }
    if (fp !== d.fingerprint) throw new RegistryError('certPem is not the certificate of the registered fingerprint')
  }
  return {
    ...(d.certPem !== undefined ? { certPem: d.certPem } : {}),
    ...(d.signedRequired !== undefined ? { signedRequired: d.signedRequired } : {}),
  }
}

export async function runSigningRpc(
  registry: Registry,
  req: SigningRpcRequest,
  config: Pick<BrokerConfig, 'dataDir' | 'privacy'> | undefined,
): Promise<unknown> {
  if (req.op === 'setDevicePolicy') {
    if (!(await registry.setSignedRequired(req.deviceId, req.signedRequired))) {
      throw new RegistryError(`unknown device ${req.deviceId}`)
    }
    return { deviceId: req.deviceId, signedRequired: req.signedRequired }
  }
  if (!config) throw new Error(`${req.op} needs the configuration (the device wrap key)`)
  const key = newContentKey()
  const wrapped = wrapContentKey(loadDeviceWrapKey(config), req.deviceId, key)
  if (!(await registry.setWrappedContentKey(req.deviceId, wrapped))) {
    throw new RegistryError(`unknown device ${req.deviceId}`)
  }
  return { deviceId: req.deviceId, contentKey: key.toString('base64') }
}
