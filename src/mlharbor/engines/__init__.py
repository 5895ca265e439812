"""Pure compute engines (NER now; faces, labels and video later): data in, results out.

Engines know nothing about the API, the store or AWS shapes; workers call them.
"""
