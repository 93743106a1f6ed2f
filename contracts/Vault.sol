// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// @title Vault
/// @notice A treasury for transaction-trigger demos and tests: it takes native currency
/// without emitting anything (so only a transaction trigger sees a deposit), has the admin
/// functions monitors watch (transferOwnership, pause, unpause, upgradeTo), and reverts
/// with a reason string, a custom error or a panic on demand.
contract Vault {
    address public owner;
    address public implementation;
    bool public paused;

    error NotOwner(address caller);

    constructor() {
        owner = msg.sender;
    }

    modifier onlyOwner() {
        if (msg.sender != owner) revert NotOwner(msg.sender);
        _;
    }

    receive() external payable {
        require(!paused, "Vault: paused");
    }

    function withdraw(address payable to, uint256 amount) external onlyOwner {
        require(!paused, "Vault: paused");
        require(amount <= address(this).balance, "Vault: not enough balance");
        (bool sent, ) = to.call{value: amount}("");
        require(sent, "Vault: transfer failed");
    }

    function transferOwnership(address newOwner) external onlyOwner {
        owner = newOwner;
    }

    function pause() external onlyOwner {
        paused = true;
    }

    function unpause() external onlyOwner {
        paused = false;
    }

    function upgradeTo(address newImplementation) external onlyOwner {
        implementation = newImplementation;
    }

    /// Divides by `divisor`: zero makes it panic (0x12), for revert-reason tests.
    function ratio(uint256 amount, uint256 divisor) external pure returns (uint256) {
        return amount / divisor;
    }
}
