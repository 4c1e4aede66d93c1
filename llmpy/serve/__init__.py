"""`llmpy serve`: an OpenAI-compatible server with continuous batching.

model.py (the model family the engine talks to), engine.py (the batching engine thread), api.py (requests
and replies of the OpenAI API), http.py (the HTTP layer), static/chat.html (the chat page at /).
"""
