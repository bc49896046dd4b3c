// Errors of the privacy operations that are the caller's to fix (unknown user, a device that is not theirs, a file
// that is not what it claims): the CLI exits 2 on them, the admin HTTP routes answer 4xx.
export class PortabilityError extends Error {
  constructor(
    message: string,
    /** 'not_found': the user or device does not exist; 'invalid': the request or the file is wrong */
    readonly kind: 'not_found' | 'invalid' = 'invalid',
  ) {
    super(message)
  }
}
