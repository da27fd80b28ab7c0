import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

/** The REST prefix of the server extension. */
export const API = 'mlops/api';

/** An answer other than 2xx, with the server's `{code, message}`. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string
  ) {
    super(message);
  }
}

/** The URL of an API path (for links such as artifact downloads). */
export function apiUrl(
  settings: ServerConnection.ISettings,
  path: string
): string {
  return URLExt.join(settings.baseUrl, API, path);
}

/**
 * Call the REST API of jupyter-mlops.
 *
 * Uses Jupyter's own connection (token, XSRF). A network failure or an answer other than
 * 2xx raises `ApiError` (status 0 for the network).
 */
export async function requestAPI<T>(
  path: string,
  settings: ServerConnection.ISettings,
  init: RequestInit = {}
): Promise<T> {
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(
      apiUrl(settings, path),
      init,
      settings
    );
  } catch (error) {
    throw new ApiError(0, `the Jupyter server is unreachable (${error})`);
  }
  const text = await response.text();
  let data: any = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const message =
      response.status === 404 && !(data && data.message)
        ? 'the jupyter-mlops server extension is not enabled on this Jupyter server'
        : (data && data.message) || response.statusText;
    throw new ApiError(response.status, message);
  }
  return data as T;
}
