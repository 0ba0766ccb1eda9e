"""The key broker's HTTP service (FastAPI): routes, work, sessions, error mapping, server.

``app.create_app(settings)`` builds the application, ``service.KeyBrokerService`` does the
work, ``server.serve_in_thread`` runs it in-process. The enclave side never imports this
package (it uses ``keybroker.client``).
"""
