"""Helpers of the browser test: a real JupyterLab server and headless Chromium (Playwright)."""
