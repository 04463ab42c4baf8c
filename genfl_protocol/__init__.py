"""The protocol between the ServerApp's strategy and the ClientApp: the message contract and Eq. (1)'s
NumPy arithmetic. The ground floor: no torch, no Flower; client_app/ and strategy/ both import it."""
