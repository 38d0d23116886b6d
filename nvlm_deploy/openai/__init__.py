"""An OpenAI-compatible chat-completions server in front of a served NVLM-D (`nvlm-deploy openai`).

`protocol` turns OpenAI requests into NVLM-D chat requests (pure functions), `images` loads image
parts, `stops` cuts answers at stop strings, `responses` builds the bodies, `app` is the aiohttp
application. Nothing here is imported by `import nvlm_deploy`.
"""
