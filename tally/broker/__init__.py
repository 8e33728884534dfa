"""The broker side: the local Tansu process and the compatibility shim Faust uses with it."""
